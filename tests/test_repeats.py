"""hydra.sweeper.repeats=K: each trial on K paired seeds, its value their mean; pruning, failures, resume, workers."""

from __future__ import annotations

import os
import signal
import statistics
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from cnnsweep.errors import UserError
from cnnsweep.files import BEST_FILE, METRICS_FILE, REPEATS_FILE
from cnnsweep.sweep.attrs import (
    CURVE,
    OWNER,
    PRUNED_BY,
    REASON,
    REPEAT,
    REPEAT_SEEDS,
    REPEATS_RAN,
    REQUEUED,
    SURPLUS,
    VALUES_SD,
)
from cnnsweep.sweep.noise import repeat_seeds
from cnnsweep.sweep.outcomes import Outcome
from cnnsweep.sweep.repeats import (
    TrialRepeats,
    check_repeats,
    job_number,
    job_place,
    repeat_overrides,
    repeat_record,
    trial_outcome,
)
from cnnsweep.sweep.results import study_rows
from cnnsweep.sweep.study import fresh_copy, open_storage
from cnnsweep.sweep.sweeper import check_study_seeds
from cnnsweep.sweep.trial import Pruned, RepeatReporter

from helpers import (
    IN_PROCESS,
    cells,
    grid_study_overrides,
    load_study,
    optuna_overrides,
    read_trials,
    summary,
    tool,
    train_py,
)

# ---- the pieces, in this process ----


def test_a_repeat_job_number_names_its_trial_and_repeat_and_one_repeat_keeps_the_trial_number():
    assert [job_place(job_number(trial, r, 3), 3) for trial in (0, 7) for r in range(3)] == [
        (trial, r) for trial in (0, 7) for r in range(3)
    ]
    assert [job_number(n, 0, 1) for n in range(4)] == [0, 1, 2, 3]  # repeats=1: trial N is job N, as before


def test_a_repeat_overrides_only_the_seed_and_its_folder():
    trial = ("optimizer.lr=0.1", "seed=7", "trainer.epochs=1")
    assert repeat_overrides(trial, 4, 2, 9) == (
        "optimizer.lr=0.1",
        "trainer.epochs=1",
        "seed=9",
        "hydra.sweep.subdir=4/2",
    )
    assert TrialRepeats(4, trial, [7], {}).job(0) == (trial, 4)  # one seed: the trial's own job, unchanged


@pytest.mark.parametrize(("repeats", "swept", "message"), [(0, [], "repeats=0"), (3, ["seed"], "drop seed")])
def test_bad_repeats_are_refused_in_one_line(repeats, swept, message):
    with pytest.raises(UserError, match=message):
        check_repeats(repeats, swept)


def outcome(state: TrialState, values=None, reason=None, test_acc=None) -> Outcome:
    attrs = {"n_params": 100, "epochs_run": 2, "test_acc": test_acc, "run_dir": "/r"} | (
        {REASON: reason} if reason else {}
    )
    return Outcome(state, values, None, attrs)


def ended(seeds: list[int], outcomes: dict[int, Outcome]) -> TrialRepeats:
    trial = TrialRepeats(3, (), seeds, {})
    for repeat, result in outcomes.items():
        trial.take()
        trial.ended(repeat, repeat_record(seeds[repeat], result, None), result.error)
    trial.pending.clear()
    return trial


def test_a_trial_is_the_mean_of_its_repeats_for_each_objective():
    trial = ended(
        [0, 1, 2], {r: outcome(TrialState.COMPLETE, [0.9 + r / 100, 100.0], test_acc=0.8 + r / 100) for r in range(3)}
    )
    result = trial_outcome(trial, None)
    assert result.state == TrialState.COMPLETE
    assert result.values == pytest.approx([0.91, 100.0]) and result.attrs["test_acc"] == pytest.approx(0.81)


def test_a_failed_repeat_fails_its_trial_naming_the_repeat_and_seed_and_stops_its_pending_repeats():
    trial = TrialRepeats(3, (), [5, 6, 7], {})
    trial.take(), trial.take()
    trial.ended(0, repeat_record(5, outcome(TrialState.COMPLETE, [0.9]), None), None)
    trial.ended(1, repeat_record(6, outcome(TrialState.FAIL, reason="Diverged: loss nan"), None), None)
    assert trial.pending == [] and trial.finished  # repeat 2 never starts
    result = trial_outcome(trial, None)
    assert result.state == TrialState.FAIL and result.values is None
    assert result.attrs[REASON] == "repeat 1 (seed 6) FAIL: Diverged: loss nan"


def test_a_trial_the_pruner_stopped_is_pruned_with_its_reason():
    trial = ended([0, 1], {0: outcome(TrialState.COMPLETE, [0.9]), 1: outcome(TrialState.PRUNED, reason="stopped")})
    result = trial_outcome(trial, "pruned after epoch 1 (mean objective of 2 repeats 0.1000)")
    assert result.state == TrialState.PRUNED
    assert result.attrs[REASON] == "repeat 1 (seed 1) PRUNED: pruned after epoch 1 (mean objective of 2 repeats 0.1000)"


def in_memory_trial(repeats: int, pruner: optuna.pruners.BasePruner) -> tuple[optuna.Study, optuna.Trial, int]:
    study = optuna.create_study(direction="maximize", pruner=pruner)
    trial = study.ask()
    return study, trial, trial._trial_id


def reporters(study: optuna.Study, trial: optuna.Trial, trial_id: int, repeats: int) -> list[RepeatReporter]:
    # each repeat's job opens its own Trial on the shared storage
    return [
        RepeatReporter(optuna.trial.Trial(study, trial_id), study._storage, trial_id, r, repeats)
        for r in range(repeats)
    ]


def test_the_mean_at_an_epoch_is_reported_once_every_repeat_reached_it():
    study, trial, trial_id = in_memory_trial(3, optuna.pruners.NopPruner())
    jobs = reporters(study, trial, trial_id, 3)
    jobs[0].report(1, 0.5, last=False)
    jobs[0].report(2, 0.6, last=False)  # a repeat ahead of the others does not wait
    jobs[1].report(1, 0.7, last=False)
    assert study.trials[0].intermediate_values == {}
    jobs[2].report(1, 0.9, last=False)
    assert study.trials[0].intermediate_values == {1: pytest.approx(0.7)}
    jobs[1].report(2, 0.8, last=False)
    jobs[2].report(2, 1.0, last=True)
    assert study.trials[0].intermediate_values == {1: pytest.approx(0.7), 2: pytest.approx(0.8)}
    assert study.trials[0].system_attrs[CURVE.format(0)] == [0.5, 0.6]


def test_a_pruned_trial_stops_its_other_repeats_at_their_next_epoch():
    study, trial, trial_id = in_memory_trial(2, optuna.pruners.ThresholdPruner(lower=0.95))
    jobs = reporters(study, trial, trial_id, 2)
    jobs[0].report(1, 0.5, last=False)
    with pytest.raises(Pruned, match=r"pruned after epoch 1 \(mean objective of 2 repeats 0.6000\)"):
        jobs[1].report(1, 0.7, last=False)
    assert study.trials[0].system_attrs[PRUNED_BY].startswith("pruned after epoch 1")
    with pytest.raises(Pruned, match="stopped after epoch 2: the trial was pruned after epoch 1"):
        jobs[0].report(2, 0.6, last=False)


def test_a_requeued_trial_carries_its_ended_repeats_only():
    study = optuna.create_study()
    trial = study.ask()
    storage = study._storage
    storage.set_trial_user_attr(trial._trial_id, REPEAT.format(0), {"seed": 0, "state": "COMPLETE", "values": [0.5]})
    for r in range(2):
        storage.set_trial_system_attr(trial._trial_id, CURVE.format(r), [0.5])
    storage.set_trial_system_attr(trial._trial_id, PRUNED_BY, "x")
    copied = fresh_copy(storage.get_trial(trial._trial_id))
    assert REPEAT.format(0) in copied.user_attrs
    assert CURVE.format(0) in copied.system_attrs and CURVE.format(1) not in copied.system_attrs
    assert PRUNED_BY not in copied.system_attrs


def test_a_study_keeps_the_seeds_it_was_made_with():
    study = optuna.create_study(study_name="s", storage=optuna.storages.InMemoryStorage())
    storage, study_id = study._storage, study._study_id
    check_study_seeds(storage, study_id, "s", [0, 1, 2])
    assert storage.get_study_user_attrs(study_id)[REPEAT_SEEDS] == [0, 1, 2]
    check_study_seeds(storage, study_id, "s", [0, 1, 2])  # the same command again
    with pytest.raises(UserError, match=r"made with repeats on the seeds \[0, 1, 2\], not on \[0, 1\]"):
        check_study_seeds(storage, study_id, "s", [0, 1])
    with pytest.raises(UserError, match="not on \\[0\\]"):
        check_study_seeds(storage, study_id, "s", [0])
    single = optuna.create_study(study_name="t", storage=storage)
    single.ask()
    with pytest.raises(UserError, match="made with one seed per trial"):
        check_study_seeds(storage, single._study_id, "t", [0, 1])


def test_one_seed_per_trial_keeps_trials_csv_columns():
    study = optuna.create_study()
    study.add_trial(
        optuna.trial.create_trial(
            value=0.5, params={"x": 1.0}, distributions={"x": optuna.distributions.FloatDistribution(0, 2)}
        )
    )
    [row], _ = study_rows(study.trials, ["val_acc"])
    assert list(row)[:4] == ["number", "state", "value", "x"] and "value_sd" not in row and "repeats" not in row


def test_a_multi_objective_trial_with_repeats_has_a_spread_per_objective_after_its_values():
    records = {REPEAT.format(r): {"seed": r, "state": "COMPLETE", "values": [0.89 + r / 50, 100.0]} for r in range(2)}
    study = optuna.create_study(directions=["maximize", "minimize"])
    x = {"x": optuna.distributions.FloatDistribution(0, 2)}
    trial = optuna.trial.create_trial(values=[0.9, 100.0], params={"x": 1.0}, distributions=x, user_attrs=records)
    study.add_trial(trial)
    [row], _ = study_rows(study.trials, ["val_acc", "n_params"], repeats=2)
    assert list(row)[:9] == ["number", "state", "value", "value_val_acc", "value_n_params", "value_sd",
                             "value_sd_val_acc", "value_sd_n_params", "repeats"]  # fmt: skip
    assert row["value_sd"] == row["value_sd_val_acc"] == pytest.approx(0.02 / 2**0.5)
    assert row["value_sd_n_params"] == 0 and row["repeats"] == 2 and row["x"] == 1.0


# ---- real sweeps (train.py --multirun on tiny data) ----


def read_repeats(sweep_dir: Path) -> list[dict[str, str]]:
    return cells(sweep_dir / REPEATS_FILE)


def by_trial(rows: list[dict[str, str]]) -> dict[int, list[dict[str, str]]]:
    grouped: dict[int, list[dict[str, str]]] = {}
    for row in rows:
        grouped.setdefault(int(row["trial"]), []).append(row)
    return grouped


def test_each_trial_trains_on_the_same_seeds_in_its_own_folders_and_its_value_is_their_mean(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = train_py(
        *optuna_overrides(tiny_mnist, sweep_dir, "hydra.sweeper.n_trials=2", "hydra.sweeper.repeats=3", "seed=4")
    )
    assert result.returncode == 0, result.stdout + result.stderr
    seeds = repeat_seeds(4, 3)
    trials = read_trials(sweep_dir)
    repeats = by_trial(read_repeats(sweep_dir))
    study = load_study(sweep_dir)
    assert [row["number"] for row in trials] == ["0", "1"] and sorted(repeats) == [0, 1]
    assert study.user_attrs[REPEAT_SEEDS] == seeds
    for row, trial in zip(trials, study.trials, strict=True):
        runs = repeats[int(row["number"])]
        assert [int(run["seed"]) for run in runs] == seeds and [run["repeat"] for run in runs] == ["0", "1", "2"]
        values = [float(run["value"]) for run in runs]
        assert row["state"] == "COMPLETE" and row["repeats"] == "3"
        assert float(row["value"]) == pytest.approx(statistics.fmean(values)) == pytest.approx(trial.value)
        assert float(row["value_sd"]) == pytest.approx(statistics.stdev(values))
        # the trial's own attrs, which the dashboard shows beside its value (the mean)
        assert trial.user_attrs[VALUES_SD] == [pytest.approx(statistics.stdev(values))]
        assert trial.user_attrs[REPEATS_RAN] == 3
        assert float(row["test_acc"]) == pytest.approx(statistics.fmean(float(run["test_acc"]) for run in runs))
        assert row["run_dir"] == str(sweep_dir / row["number"])
        for run, seed in zip(runs, seeds, strict=True):
            assert run["run_dir"] == str(sweep_dir / row["number"] / run["repeat"]) and run["state"] == "COMPLETE"
            said = summary(run["run_dir"])
            assert said["objective_value"] == float(run["value"]) and said["final_test_acc"] == float(run["test_acc"])
            config = yaml.safe_load((Path(run["run_dir"]) / ".hydra" / "config.yaml").read_text())
            assert config["seed"] == seed and config["data"]["split_seed"] == 0  # the validation split is kept
            assert config["optimizer"]["lr"] == pytest.approx(float(row["optimizer.lr"]))
        # the mean of the repeats at each epoch is what the pruner saw
        assert trial.intermediate_values == {1: pytest.approx(trial.value)}
    best = yaml.safe_load((sweep_dir / BEST_FILE).read_text())
    top = max(trials, key=lambda row: float(row["value"]))
    assert best["best_trial"] == int(top["number"]) and best["best_repeats"] == 3
    assert best["best_value_sd"] == pytest.approx(float(top["value_sd"]))
    assert [o for o in best["best_overrides"] if o.startswith("seed=")] == ["seed=4"]  # the trial's: its first seed
    assert not (sweep_dir / "0" / ".hydra").exists()  # the trial's folder only holds its repeats' folders

    report = tool("report", sweep_dir, "--no-plots")
    assert report.returncode == 0, report.stderr
    shown = f"{float(top['value']):.4f} +- {float(top['value_sd']):.4f} (3 repeats)"
    assert f"  best: trial {top['number']}, value {shown}, test_acc" in report.stdout
    assert "  trials by val_acc, mean +- sd over 3 seeds (best 2):" in report.stdout
    assert f"    trial {top['number']}: {shown}, test_acc" in report.stdout


@pytest.mark.slow  # a sweep (or runs) in subprocesses: the quick loop keeps its neighbours
def test_a_configuration_over_budget_launches_none_of_its_repeats(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    grid = ("model.widths.6=choice(16,400)", "hydra.sweeper.repeats=2", *IN_PROCESS)
    result = train_py(*grid_study_overrides(tiny_mnist, sweep_dir, *grid))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {row["model.widths.6"]: row for row in read_trials(sweep_dir)}
    over, fine = rows["400"], rows["16"]
    assert over["state"] == "PRUNED" and over["repeats"] == "0" and "over the budget of 20,000" in over["reason"]
    assert not (sweep_dir / over["number"]).exists()  # checked once, before any of its jobs
    assert fine["state"] == "COMPLETE" and fine["repeats"] == "2"
    assert sorted(int(run["trial"]) for run in read_repeats(sweep_dir)) == [int(fine["number"])] * 2


@pytest.mark.slow  # a sweep (or runs) in subprocesses: the quick loop keeps its neighbours
def test_a_rerun_with_other_repeats_is_refused_in_one_line(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    first = train_py(*optuna_overrides(tiny_mnist, sweep_dir, "hydra.sweeper.n_trials=1", "data.train_limit=300"))
    assert first.returncode == 0, first.stderr
    again = train_py(*optuna_overrides(tiny_mnist, sweep_dir, "hydra.sweeper.n_trials=2", "hydra.sweeper.repeats=2"))
    assert again.returncode == 2 and "made with one seed per trial, not on [0, 1]" in again.stderr, again.stderr
    assert len(load_study(sweep_dir).trials) == 1


@pytest.mark.slow  # a sweep (or runs) in subprocesses: the quick loop keeps its neighbours
def test_a_pruned_trial_stops_its_repeats_and_is_pruned(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    # ThresholdPruner(lower=1.1) prunes any mean accuracy: trial 0's repeats run one after another (in this
    # process), so repeat 0 runs to its end alone; repeat 1's first epoch completes the set and prunes it.
    args = ("hydra.sweeper.n_trials=1", "hydra.sweeper.repeats=2", "trainer.epochs=3", "hydra/sweeper/pruner=threshold",
            "hydra.sweeper.pruner.lower=1.1")  # fmt: skip
    result = train_py(*optuna_overrides(tiny_mnist, sweep_dir, *args))
    assert result.returncode == 0, result.stdout + result.stderr
    [row] = read_trials(sweep_dir)
    first, second = read_repeats(sweep_dir)
    assert row["state"] == "PRUNED" and row["value"] == "" and row["repeats"] == "2"
    assert row["reason"].startswith("repeat 1 (seed 1) PRUNED: pruned after epoch 1 (mean objective of 2 repeats")
    assert (first["state"], first["epochs_run"]) == ("COMPLETE", "3")
    assert (second["state"], second["epochs_run"]) == ("PRUNED", "1")
    assert summary(second["run_dir"])["status"] == "pruned"
    [trial] = load_study(sweep_dir).trials
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [1]


@pytest.mark.slow
def test_a_failing_repeat_fails_its_trial_and_no_more_of_its_repeats_run(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    grid = ("optimizer.lr=choice(0.02,1e9)", "hydra.sweeper.max_failure_rate=0.5", "hydra.sweeper.repeats=2")
    grid = (*grid, *IN_PROCESS)
    result = train_py(*grid_study_overrides(tiny_mnist, sweep_dir, *grid))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {row["optimizer.lr"]: row for row in read_trials(sweep_dir)}
    repeats = by_trial(read_repeats(sweep_dir))
    failed, fine = rows["1000000000.0"], rows["0.02"]
    assert failed["state"] == "FAIL" and failed["repeats"] == "1" and failed["value"] == ""
    assert failed["reason"].startswith("repeat 0 (seed 0) FAIL: Diverged: training diverged: loss")
    [run] = repeats[int(failed["number"])]  # its second repeat never started
    assert run["state"] == "FAIL" and not (sweep_dir / failed["number"] / "1").exists()
    assert fine["state"] == "COMPLETE" and [r["state"] for r in repeats[int(fine["number"])]] == ["COMPLETE"] * 2


@pytest.mark.slow
def test_repeats_spread_over_parallel_lanes_and_a_pruned_trial_stops_them_all(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ("hydra.sweeper.n_trials=1", "hydra.sweeper.repeats=2", "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2",
            "trainer.epochs=30", "hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=1.1")  # fmt: skip
    result = train_py(*optuna_overrides(tiny_mnist, sweep_dir, *args))
    assert result.returncode == 0, result.stdout + result.stderr
    [row] = read_trials(sweep_dir)
    runs = read_repeats(sweep_dir)
    assert row["state"] == "PRUNED" and [run["state"] for run in runs] == ["PRUNED", "PRUNED"]
    assert sorted(int(run["epochs_run"]) for run in runs)[0] == 1  # the one that completed epoch 1's set
    assert all(int(run["epochs_run"]) < 30 for run in runs)  # the other stopped at its next epoch


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_rerunning_its_finished_repeats(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = optuna_overrides(
        tiny_mnist, sweep_dir, "hydra.sweeper.n_trials=1", "hydra.sweeper.repeats=2", "trainer.epochs=8"
    )
    sweep = train_py(*args, wait=False)
    try:
        deadline = time.time() + 120
        while not (sweep_dir / "0" / "1" / METRICS_FILE).exists() and time.time() < deadline:
            time.sleep(0.1)  # repeat 0 ended, repeat 1 is training
        assert (sweep_dir / "0" / "1" / METRICS_FILE).exists(), "repeat 1 never started"
    finally:
        sweep.send_signal(signal.SIGKILL)
        sweep.wait()
    [killed] = load_study(sweep_dir).trials
    assert killed.state == TrialState.RUNNING and list(killed.user_attrs[REPEAT.format(0)]["values"])

    resumed = train_py(*args)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    lost, retry = load_study(sweep_dir).trials
    assert lost.state == TrialState.FAIL and lost.user_attrs[REQUEUED] and retry.state == TrialState.COMPLETE
    assert retry.params == lost.params
    runs = by_trial(read_repeats(sweep_dir))
    carried, rerun = runs[1]
    assert carried["run_dir"] == str(sweep_dir / "0" / "0")  # repeat 0 ran once, before the kill
    assert rerun["run_dir"] == str(sweep_dir / "1" / "1") and rerun["state"] == "COMPLETE"
    assert not (sweep_dir / "1" / "0").exists()
    row = {r["number"]: r for r in read_trials(sweep_dir)}["1"]
    assert float(row["value"]) == pytest.approx((float(carried["value"]) + float(rerun["value"])) / 2)
    assert retry.intermediate_values and max(retry.intermediate_values) == 8  # the mean curve, carried curve included


@pytest.mark.slow
def test_ctrl_c_requeues_a_trial_with_its_finished_repeats_and_the_rerun_runs_the_rest(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = optuna_overrides(tiny_mnist, sweep_dir, "hydra.sweeper.n_trials=1", "hydra.sweeper.repeats=2",
                            "hydra/sweeper/pruner=nop", "trainer.epochs=6")  # fmt: skip
    sweep = train_py(*args, wait=False, start_new_session=True)
    deadline = time.time() + 120
    while not (sweep_dir / "0" / "1" / METRICS_FILE).exists() and time.time() < deadline:
        time.sleep(0.1)  # repeat 0 ended, repeat 1 is training
    os.killpg(sweep.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
    output = sweep.communicate(timeout=120)[0]
    assert sweep.returncode == 130 and "Traceback" not in output, output
    stopped, queued = load_study(sweep_dir).trials
    assert stopped.state == TrialState.FAIL and stopped.user_attrs[REQUEUED]
    assert stopped.user_attrs[REASON] == "Interrupted: interrupted by SIGINT"
    assert queued.state == TrialState.WAITING and queued.user_attrs[REPEAT.format(0)]["state"] == "COMPLETE"
    assert REPEAT.format(1) not in queued.user_attrs  # the interrupted repeat is not carried over

    resumed = train_py(*args)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    retry = load_study(sweep_dir).trials[1]
    assert retry.state == TrialState.COMPLETE and retry.params == stopped.params
    carried, rerun = by_trial(read_repeats(sweep_dir))[1]
    assert (carried["run_dir"], carried["epochs_run"]) == (str(sweep_dir / "0" / "0"), "6")
    assert (rerun["run_dir"], rerun["epochs_run"]) == (str(sweep_dir / "1" / "1"), "6")
    assert not (sweep_dir / "1" / "0").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["journal", "postgres"])
def test_two_workers_on_one_study_run_each_repeat_of_every_trial_once(tiny_mnist, tmp_path, request, kind):
    url = (
        f"journal://{tmp_path / 'shared' / 'study.log'}"
        if kind == "journal"
        else request.getfixturevalue("postgres_url")
    )
    shared = ("hydra.sweeper.n_trials=4", "hydra.sweeper.repeats=2", f"hydra.sweeper.storage={url}")
    workers = [train_py(*optuna_overrides(tiny_mnist, tmp_path / f"worker{i}", *shared), wait=False) for i in range(2)]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    storage = open_storage(url)
    trials = [t for t in optuna.load_study(study_name="test", storage=storage).trials if not t.user_attrs.get(SURPLUS)]
    assert len(trials) == 4 and {t.state.name for t in trials} == {"COMPLETE"}
    assert len({t.system_attrs[OWNER] for t in trials}) == 2, "both workers ran trials"
    for trial in trials:
        records = [trial.user_attrs[REPEAT.format(r)] for r in range(2)]
        assert [record["seed"] for record in records] == [0, 1]
        assert trial.value == pytest.approx(statistics.fmean(record["values"][0] for record in records))
    runs = sorted(path.relative_to(tmp_path).parts[1:3] for path in tmp_path.glob(f"worker*/*/*/{METRICS_FILE}"))
    assert runs == sorted(
        (str(t.number), str(r)) for t in trials for r in range(2)
    )  # each repeat ran once, in one worker
    for i in range(2):  # each worker's tables list the whole study
        assert len(read_repeats(tmp_path / f"worker{i}")) == 8


@pytest.mark.slow
def test_mlflow_shows_each_trials_mean_and_sd_beside_a_run_per_repeat(tiny_mnist, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from cnnsweep.track.mlflow import REPEAT_OF_TAG, REPEAT_TAG, TRIAL_TAG

    sweep_dir, store = tmp_path / "sweep", f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = optuna_overrides(
        tiny_mnist, sweep_dir, "hydra.sweeper.n_trials=2", "hydra.sweeper.repeats=2", "logger=mlflow",
        f"logger.mlflow.tracking_uri={store}",
    )  # fmt: skip
    result = train_py(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    client = mlflow.tracking.MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("cnnsweep").experiment_id])
    by_name = {run.info.run_name: run for run in runs}
    assert set(by_name) == {"test", "trial 0", "trial 1", "trial 0 repeat 0", "trial 0 repeat 1",
                            "trial 1 repeat 0", "trial 1 repeat 1"}  # fmt: skip
    repeats = by_trial(read_repeats(sweep_dir))
    for row in read_trials(sweep_dir):
        number = int(row["number"])
        trial = by_name[f"trial {number}"]
        assert trial.data.tags[TRIAL_TAG] == str(number) and REPEAT_TAG not in trial.data.tags
        assert trial.data.metrics["objective.val_acc"] == pytest.approx(float(row["value"]))  # the mean
        assert trial.data.metrics["objective.val_acc.sd"] == pytest.approx(float(row["value_sd"]))
        assert trial.data.metrics["repeats"] == 2
        for run in repeats[number]:
            own = by_name[f"trial {number} repeat {run['repeat']}"]
            assert (own.data.tags[REPEAT_OF_TAG], own.data.tags[REPEAT_TAG]) == (str(number), run["repeat"])
            assert own.data.params["seed"] == run["seed"] and TRIAL_TAG not in own.data.tags
            assert own.data.metrics["summary.objective_value"] == pytest.approx(float(run["value"]))
