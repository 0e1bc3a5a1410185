"""Sweeps through `python train.py --multirun` on tiny data: every trial on record, with its state."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
import yaml

from cnnsweep.files import BEST_FILE, STUDY_DB, SUMMARY_FILE, TRIALS_FILE
from cnnsweep.records import RunStatus
from cnnsweep.sweep.attrs import BUDGET_CONSTRAINT, OVER_BUDGET, OWNER, SURPLUS
from cnnsweep.sweep.results import folder_rows
from cnnsweep.sweep.study import open_storage
from cnnsweep.train.model import ConvNet, count_parameters

from helpers import (
    IN_PROCESS,
    REPO,
    error_line,
    grid_study_overrides,
    load_study,
    optuna_overrides,
    read_trials,
    study_url,
    summary,
    sweep_overrides,
    tool,
    train_py,
)


def test_optuna_sweep_records_every_trial_with_its_facts(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    default = sweep_overrides(tiny_mnist, sweep_dir, "hparams_search=lr_gamma_dropout", "hydra.sweeper.study_name=test")
    result = train_py(*default, "hydra.sweeper.n_trials=3")  # as users run it: one trial per core, in parallel
    assert result.returncode == 0, result.stdout + result.stderr

    rows = read_trials(sweep_dir)
    assert [row["number"] for row in rows] == ["0", "1", "2"]
    assert {row["state"] for row in rows} == {"COMPLETE"}
    study = load_study(sweep_dir)
    for row, trial in zip(rows, study.trials, strict=True):  # the table says what the study holds
        assert {name: float(row[name]) for name in trial.params} == pytest.approx(trial.params)
        assert float(row["duration_s"]) == round(trial.duration.total_seconds(), 1)
        said = summary(row["run_dir"])
        assert Path(row["run_dir"]) == sweep_dir / row["number"]
        assert said["objective"] == "val_acc" and float(row["value"]) == said["objective_value"]
        assert float(row["test_acc"]) == said["final_test_acc"]
        assert int(row["n_params"]) == 18_970 and row["epochs_run"] == "1"
        config = yaml.safe_load((Path(row["run_dir"]) / ".hydra" / "config.yaml").read_text())
        assert config["optimizer"]["lr"] == pytest.approx(float(row["optimizer.lr"]))
        assert "hydra.sweeper.trial" not in (Path(row["run_dir"]) / ".hydra" / "overrides.yaml").read_text()

    best = yaml.safe_load((sweep_dir / BEST_FILE).read_text())
    top = max(rows, key=lambda row: float(row["value"]))
    assert best["best_trial"] == int(top["number"]) and best["best_value"] == float(top["value"])
    assert best["n_trials_by_state"] == {"COMPLETE": 3}
    assert best["best_command"].startswith("python train.py ")
    assert f"optimizer.lr={best['best_params']['optimizer.lr']}" in best["best_command"]
    assert "hparams_search=lr_gamma_dropout" in best["best_overrides"]

    assert [t.intermediate_values for t in study.trials] == [{1: float(row["value"])} for row in rows]
    assert study.metric_names == ["val_acc"]  # the dashboard and Optuna's plots name the objective
    # every trial carries its distance to the budget as an Optuna constraint (feasible: <= 0)
    assert [t.constraints for t in study.trials] == [{BUDGET_CONSTRAINT: 18_970 - 20_000}] * 3


def test_over_budget_trials_are_pruned_fast_and_never_best(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = train_py(
        *grid_study_overrides(tiny_mnist, sweep_dir, "model.widths.6=choice(16,400)"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {row["model.widths.6"]: row for row in read_trials(sweep_dir)}
    assert set(rows) == {"16", "400"}
    over = rows["400"]
    assert over["state"] == "PRUNED" and over["value"] == "" and int(over["n_params"]) > 20_000
    assert "over the budget of 20,000" in over["reason"] and float(over["duration_s"]) < 2.0
    assert not (sweep_dir / over["number"]).exists() and over["run_dir"] == ""  # refused before its job started
    assert rows["16"]["state"] == "COMPLETE"
    best = yaml.safe_load((sweep_dir / BEST_FILE).read_text())
    assert best["best_trial"] == int(rows["16"]["number"])
    # recorded with its positive constraint value, so that samplers which read constraints learn the region
    constraints = {t.number: t.constraints[BUDGET_CONSTRAINT] for t in load_study(sweep_dir).trials}
    assert constraints[int(over["number"])] == int(over["n_params"]) - 20_000 > 0
    assert constraints[int(rows["16"]["number"])] == int(rows["16"]["n_params"]) - 20_000 <= 0


@pytest.mark.slow
def test_a_pruned_trial_stops_early_and_is_recorded_as_pruned(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    # ThresholdPruner(lower=1.1) prunes any accuracy after the first epoch: a forced prune.
    result = train_py(
        *optuna_overrides(
            tiny_mnist,
            sweep_dir,
            "hydra.sweeper.n_trials=2",
            "trainer.epochs=3",
            "hydra/sweeper/pruner=threshold",
            "hydra.sweeper.pruner.lower=1.1",
        )
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for row in read_trials(sweep_dir):
        assert row["state"] == "PRUNED" and row["epochs_run"] == "1"
        assert row["reason"].startswith("pruned after epoch 1")
        said = summary(row["run_dir"])
        assert said["status"] == RunStatus.PRUNED
    assert {t.state for t in load_study(sweep_dir).trials} == {optuna.trial.TrialState.PRUNED}


def test_a_diverging_trial_fails_without_stopping_the_sweep(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    grid = ("optimizer.lr=choice(0.02,1e9)", "seed=choice(0,1)", "hydra.sweeper.max_failure_rate=0.5")
    result = train_py(*grid_study_overrides(tiny_mnist, sweep_dir, *grid))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_trials(sweep_dir)
    assert len(rows) == 4
    failed = [row for row in rows if row["state"] == "FAIL"]
    assert {row["optimizer.lr"] for row in failed} == {"1000000000.0"} and len(failed) == 2
    assert all("Diverged: training diverged: loss" in row["reason"] for row in failed)
    assert {row["state"] for row in rows if row["optimizer.lr"] == "0.02"} == {"COMPLETE"}


@pytest.mark.slow
def test_too_many_failures_stop_the_sweep_with_a_clear_message(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = train_py(*optuna_overrides(tiny_mnist, sweep_dir, "optimizer.lr=1e9", "hydra.sweeper.n_trials=4"))
    line = error_line(result, 1)
    assert line.startswith("error: 2 trials failed, more than max_failure_rate=0.25 of n_trials=4")
    assert line.endswith(f"trials on record in {sweep_dir / TRIALS_FILE}")
    states = [row["state"] for row in read_trials(sweep_dir)]
    assert set(states) == {"FAIL"} and 2 <= len(states) < 4  # a trial already in flight may still finish


@pytest.mark.slow
def test_rerunning_continues_the_same_study(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    first = train_py(*optuna_overrides(tiny_mnist, sweep_dir, "hydra.sweeper.n_trials=2"))
    assert first.returncode == 0, first.stdout + first.stderr
    before = read_trials(sweep_dir)
    again = train_py(*optuna_overrides(tiny_mnist, sweep_dir, "hydra.sweeper.n_trials=3"))
    assert again.returncode == 0, again.stdout + again.stderr
    after = read_trials(sweep_dir)
    assert [row["number"] for row in after] == ["0", "1", "2"]
    assert after[:2] == before
    params = [tuple(row[k] for k in ("optimizer.lr", "scheduler.gamma", "model.dropout")) for row in after]
    assert len(set(params)) == 3, "a resumed sweep must not repeat the trials it already ran"
    done = train_py(*optuna_overrides(tiny_mnist, sweep_dir, "hydra.sweeper.n_trials=3"))
    assert done.returncode == 0 and len(load_study(sweep_dir).trials) == 3  # nothing left to do


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgresql"])
def test_two_workers_share_one_study_and_respect_its_total(tiny_mnist, tmp_path, request, kind):
    """Two sweep processes on one study: in one folder (SQLite: the study is its optuna.db), or each in its own
    (a journal file, a PostgreSQL server)."""
    shared = kind == "sqlite"
    folders = [tmp_path / "sweep"] * 2 if shared else [tmp_path / f"worker{i}" for i in range(2)]
    if kind == "postgresql":
        url = request.getfixturevalue("postgres_url")  # a throwaway server; skipped, saying why, where none starts
    else:
        url = study_url(folders[0]) if shared else f"journal://{tmp_path / 'shared' / 'study.log'}"
    args = ["hydra.sweeper.n_trials=4", *([] if shared else [f"hydra.sweeper.storage={url}"])]
    workers = [train_py(*optuna_overrides(tiny_mnist, folder, *args), wait=False) for folder in folders]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    trials = optuna.load_study(study_name="test", storage=open_storage(url)).trials
    counted = [t for t in trials if not t.user_attrs.get(SURPLUS)]
    assert len(counted) == 4 and {t.state.name for t in counted} == {"COMPLETE"}
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # each number once
    assert len({tuple(sorted(t.params.items())) for t in counted}) == 4, "workers must not draw the same trials"
    assert len({t.system_attrs[OWNER] for t in counted}) == 2, "both workers ran trials"
    for folder in folders:  # each worker's table lists the whole study
        assert sorted(int(row["number"]) for row in read_trials(folder)) == [t.number for t in counted]


def test_a_study_of_optuna_2_10_is_refused_in_one_line_before_any_trial(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    old_database = REPO / "tests" / "data" / "optuna210.db"  # a study of two trials written by optuna 2.10.1
    shutil.copy(old_database, sweep_dir / STUDY_DB)
    line = error_line(train_py(*optuna_overrides(tiny_mnist, sweep_dir, "hydra.sweeper.n_trials=1")), 2)
    url = study_url(sweep_dir)
    assert line == (
        f"error: study storage {url} was written by optuna 2.10.1: run `optuna storage upgrade --storage {url}` once "
        f"to use it with optuna {optuna.__version__} (one way: the older Optuna cannot read it afterwards; copy the "
        "file first to keep both)"
    )
    assert (sweep_dir / STUDY_DB).read_bytes() == old_database.read_bytes()  # refused before anything was written
    assert not [path for path in sweep_dir.iterdir() if path.name.isdigit()]  # no job started


@pytest.mark.slow
def test_plain_grid_sweep_writes_the_same_table(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "grid"
    result = train_py(*sweep_overrides(tiny_mnist, sweep_dir, "model.dropout=0.0,0.1"))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_trials(sweep_dir)
    assert [(row["number"], row["model.dropout"], row["state"]) for row in rows] == [
        ("0", "0.0", "COMPLETE"),
        ("1", "0.1", "COMPLETE"),
    ]
    for row in rows:
        said = summary(row["run_dir"])
        assert float(row["value"]) == said["objective_value"] and int(row["n_params"]) == 18_970
    best = yaml.safe_load((sweep_dir / BEST_FILE).read_text())
    top = max(rows, key=lambda row: float(row["value"]))
    assert best["name"] == "grid" and best["best_trial"] == int(top["number"])


def test_a_grid_job_without_summary_is_running_while_the_sweep_runs_and_failed_after(tmp_path):
    (tmp_path / "0" / ".hydra").mkdir(parents=True)  # a job that has not built its model yet
    (tmp_path / "0" / ".hydra" / "overrides.yaml").write_text("- model.dropout=0.1\n")
    [during], _ = folder_rows(tmp_path, ["val_acc"], in_flight=True)
    [after], _ = folder_rows(tmp_path, ["val_acc"])
    assert (during["state"], during["reason"]) == ("RUNNING", "starting")
    assert after["state"] == "FAIL" and after["reason"].startswith("no summary.json")


@pytest.mark.slow
def test_a_loss_objective_is_minimised_and_its_lowest_trial_is_best(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = train_py(*optuna_overrides(tiny_mnist, sweep_dir, "objective=val_loss", "hydra.sweeper.n_trials=3"))
    assert result.returncode == 0, result.stdout + result.stderr
    study = load_study(sweep_dir)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    rows = read_trials(sweep_dir)
    lowest = min(rows, key=lambda row: float(row["value"]))
    for row in rows:
        said = summary(row["run_dir"])
        assert said["objective"] == "val_loss" and float(row["value"]) == said["final_val_loss"]
    best = yaml.safe_load((sweep_dir / BEST_FILE).read_text())
    assert (best["objective"], best["direction"]) == ("val_loss", "minimize")
    assert best["best_trial"] == int(lowest["number"]) == study.best_trial.number
    report = tool("report", sweep_dir, "--format", "json", "--no-plots")
    [sweep] = json.loads(report.stdout)["sweeps"]
    assert sweep["directions"] == ["minimize"] and sweep["best"]["number"] == int(lowest["number"])


def test_a_direction_that_contradicts_the_objective_is_refused_before_any_trial(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = train_py(
        *optuna_overrides(tiny_mnist, sweep_dir, "objective=val_loss", "hydra.sweeper.direction=maximize")
    )
    assert error_line(result, 2) == (
        "error: hydra.sweeper.direction=maximize contradicts objective=val_loss, which is to minimize; "
        "drop hydra.sweeper.direction (it follows the objective)"
    )
    assert not (sweep_dir / STUDY_DB).exists() and not list(sweep_dir.glob(f"*/{SUMMARY_FILE}"))


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["nsgaii", "tpe"])
def test_a_multi_objective_sweep_records_every_objective_and_its_pareto_front(tiny_mnist, tmp_path, sampler):
    sweep_dir = tmp_path / "sweep"
    args = sweep_overrides(
        tiny_mnist, sweep_dir, "hparams_search=pareto", "hydra.sweeper.study_name=test", *IN_PROCESS,
        f"hydra/sweeper/sampler={sampler}", "hydra.sweeper.n_trials=4", "objective=[val_acc,n_params,train_seconds]",
    )  # fmt: skip
    result = train_py(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Optuna cannot prune multi-objective trials; none is pruned" in result.stdout

    study = load_study(sweep_dir)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    rows = read_trials(sweep_dir)
    assert len(rows) == 4 and {row["state"] for row in rows} == {"COMPLETE"}
    for row, trial in zip(rows, study.trials, strict=True):
        said = summary(row["run_dir"])
        assert said["objectives"] == {
            "val_acc": said["final_val_acc"], "n_params": said["n_params"],
            "train_seconds": pytest.approx(said["objectives"]["train_seconds"]),
        }  # fmt: skip
        assert trial.values == [said["final_val_acc"], said["n_params"], said["objectives"]["train_seconds"]]
        assert float(row["value_val_acc"]) == trial.values[0] and int(row["value_n_params"]) == said["n_params"]
        assert float(row["value_train_seconds"]) == pytest.approx(trial.values[2])

    results = yaml.safe_load((sweep_dir / BEST_FILE).read_text())
    assert results["objectives"] == ["val_acc", "n_params", "train_seconds"]
    front = results["pareto_front"]
    assert sorted(entry["number"] for entry in front) == sorted(t.number for t in study.best_trials)
    for entry in front:
        assert entry["run_dir"] == str(sweep_dir / str(entry["number"]))
        assert entry["command"].startswith("python train.py ") and "model.widths.0=" in entry["command"]
        assert entry["values"]["n_params"] == entry["n_params"]

    report = tool("report", sweep_dir)
    assert f"Pareto front ({len(front)} trials, best val_acc first)" in report.stdout
    assert (sweep_dir / "pareto_front.png").stat().st_size > 10_000


def test_cmaes_is_refused_for_several_objectives_in_one_line(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = sweep_overrides(tiny_mnist, sweep_dir, "hparams_search=pareto", "hydra/sweeper/sampler=cmaes", *IN_PROCESS)
    result = train_py(*args)
    line = error_line(result, 2)
    assert line.startswith("error: hydra/sweeper/sampler=cmaes optimises one objective")
    assert not (sweep_dir / STUDY_DB).exists()


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["random", "cmaes", "grid"])
def test_a_tiny_sweep_runs_with_each_sampler(tiny_mnist, tmp_path, sampler):
    sweep_dir = tmp_path / "sweep"
    result = train_py(
        *optuna_overrides(tiny_mnist, sweep_dir, f"hydra/sweeper/sampler={sampler}", "hydra.sweeper.n_trials=3")
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_trials(sweep_dir)
    assert [row["state"] for row in rows] == ["COMPLETE"] * 3
    params = {tuple(row[k] for k in ("optimizer.lr", "scheduler.gamma", "model.dropout")) for row in rows}
    assert len(params) == 3
    if sampler == "grid":  # lr in 0.005-0.2 (log), gamma in 0.05-0.5, dropout in 0-0.2: three points each
        assert {row["optimizer.lr"] for row in rows} <= {"0.005", "0.0316228", "0.2"}
        assert {row["model.dropout"] for row in rows} <= {"0.0", "0.1", "0.2"}


@pytest.mark.slow
def test_a_failure_every_trial_shares_stops_the_sweep_after_one_trial(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = train_py(*optuna_overrides(tiny_mnist, sweep_dir, "data.val_size=600", "hydra.sweeper.n_trials=4"))
    line = error_line(result, 2)
    assert line.startswith("error: trial 0 failed: data.val_size=600")
    assert line.endswith(f"every trial would fail the same way; trials on record in {sweep_dir / TRIALS_FILE}")
    rows = read_trials(sweep_dir)
    assert [(row["number"], row["state"]) for row in rows] == [("0", "FAIL")]
    assert "data.val_size=600" in rows[0]["reason"]


@pytest.mark.slow
def test_over_budget_draws_use_up_no_trial(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = sweep_overrides(
        tiny_mnist, sweep_dir, "hparams_search=architecture", "hydra.sweeper.study_name=test", *IN_PROCESS,
        "hydra.sweeper.n_trials=2", "model.widths.6=int(interval(32,600))", "hydra/sweeper/sampler=random",
    )  # fmt: skip
    result = train_py(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_trials(sweep_dir)
    trained = [row for row in rows if row["state"] == "COMPLETE"]
    over = [row for row in rows if row["state"] == "PRUNED"]
    assert len(trained) == 2 and len(over) >= 1 and len(rows) == len(trained) + len(over)
    assert all(int(row["n_params"]) <= 20_000 for row in trained)
    for row in over:
        assert int(row["n_params"]) > 20_000 and "over the budget of 20,000" in row["reason"]
        assert not (sweep_dir / row["number"]).exists()
    assert {t.number for t in load_study(sweep_dir).trials if t.user_attrs.get(OVER_BUDGET)} == {
        int(row["number"]) for row in over
    }


@pytest.mark.slow
def test_a_space_almost_all_over_budget_stops_in_one_line(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = sweep_overrides(
        tiny_mnist, sweep_dir, "hparams_search=architecture", "hydra.sweeper.study_name=test", *IN_PROCESS,
        "model.widths.6=int(interval(3000,4000))", "hydra/sweeper/sampler=random",  # TPE's draws cost 8 s more
    )  # fmt: skip
    result = train_py(*args)
    line = error_line(result, 2)
    assert line.startswith("error: 40 of the study's 40 draws (100%) were over budget.max_params=20,000")
    assert "narrow the width ranges in hydra.sweeper.params" in line
    assert {row["state"] for row in read_trials(sweep_dir)} == {"PRUNED"}
    assert not [path for path in sweep_dir.iterdir() if path.name.isdigit()]  # no job ever started


@pytest.mark.slow
def test_the_fashion_search_runs_on_another_data_set_with_another_sampler_and_objective(tiny_cifar10, tmp_path):
    # hparams_search=fashion names Fashion-MNIST; data=cifar10 on the command line wins, and every
    # network of the search is built for CIFAR-10's 3x32x32 images.
    sweep_dir = tmp_path / "sweep"
    result = train_py(
        *sweep_overrides(tiny_cifar10, sweep_dir, "hparams_search=fashion", "data=cifar10", "data.check_md5=false"),
        *IN_PROCESS, "hydra.sweeper.study_name=test", "hydra/sweeper/sampler=random", "objective=val_loss",
        "hydra.sweeper.n_trials=3",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [row for row in read_trials(sweep_dir) if row["run_dir"]]  # over-budget draws have no job
    assert [row["state"] for row in rows] == ["COMPLETE"] * 3
    assert load_study(sweep_dir).direction == optuna.study.StudyDirection.MINIMIZE
    for row in rows:
        widths = [int(row[f"model.widths.{i}"]) for i in range(7)]
        layout = ["conv", "conv", "pool", "conv1x1", "conv", "conv", "pool", "conv", "conv"]
        network = ConvNet(widths, layout, dropout=0.0, head="gap", in_channels=3, image_size=32, num_classes=10)
        assert int(row["n_params"]) == count_parameters(network) <= 20_000
        assert row["augmentation.padding"] in {"0", "1", "2", "3"} and row["augmentation.flip"] in {"True", "False"}
