"""Confirmation: a study's best configurations re-trained on fresh seeds, ranked with intervals.

The analysis on made-up numbers (fast), then a tiny sweep confirmed through `cnnsweep confirm`
and as the sweep's last stage (slow: each trains a few networks)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.distributions import FloatDistribution

from cnnsweep.files import BEST_FILE, CONFIRMATION_FILE, CONFIRMATION_PLOT, MULTIRUN_FILE, SUMMARY_FILE
from cnnsweep.objectives import MAXIMIZE, MINIMIZE
from cnnsweep.sweep.attrs import CONFIRM_SEED, CONFIRMS, REASON, REQUEUED
from cnnsweep.sweep.confirmation import (
    BEST,
    BETTER,
    TIED,
    WORSE,
    Candidate,
    SeedRun,
    confirmed_params,
    pick_candidates,
    rank_confirmed,
    read_confirmation,
    winner_entry,
    write_confirmation,
)
from cnnsweep.sweep.confirming import ConfirmationStage, confirm_study_name
from cnnsweep.sweep.noise import confirmation_seeds, mean_interval, paired_difference
from cnnsweep.sweep.plugin_facts import TARGET
from cnnsweep.sweep.results import write_confirmed
from cnnsweep.sweep.study import Lanes, open_storage
from cnnsweep.tools import confirm as confirm_tool
from cnnsweep.train.signals import Interrupted

from helpers import error_line, load_study, optuna_overrides, read_trials, study_url, summary, tool, train_py


def runs_of(trial: int, values: list[float], first_seed: int = 3, test: float = 0.99) -> list[SeedRun]:
    return [SeedRun(trial, first_seed + i, value, test + i / 1000) for i, value in enumerate(values)]


def row(number: int, value: float, state: str = "COMPLETE", **extra: object) -> dict:
    facts = {"n_params": 100, "epochs_run": 1, "duration_s": 1.0, "test_acc": 0.9, "run_dir": "", "reason": None}
    return {"number": number, "state": state, "value": value, "optimizer.lr": 0.01 * number, **extra, **facts}


def test_candidates_are_the_n_best_complete_trials_by_the_objective():
    rows = [row(0, 0.90), row(1, 0.95), row(2, 0.99, state="PRUNED"), row(3, 0.97), row(4, 0.93)]
    picked = pick_candidates(rows, ["val_acc"], [MAXIMIZE], top=3)
    assert [c.number for c in picked] == [3, 1, 4]
    assert picked[0].params == {"optimizer.lr": 0.03} and picked[0].search_value == 0.97
    assert [c.number for c in pick_candidates(rows, ["val_loss"], [MINIMIZE], top=2)] == [0, 4]


def test_a_multi_objective_study_offers_its_front_best_by_the_first_objective():
    objectives = ["val_acc", "n_params"]
    rows = [
        row(0, 0.90, value_val_acc=0.90, value_n_params=1000),
        row(1, 0.95, value_val_acc=0.95, value_n_params=3000),
        row(2, 0.94, value_val_acc=0.94, value_n_params=4000),  # dominated by 1
        row(3, 0.97, value_val_acc=0.97, value_n_params=9000),
    ]
    picked = pick_candidates(rows, objectives, [MAXIMIZE, "minimize"], top=5)
    assert [c.number for c in picked] == [3, 1, 0]  # the whole front, smaller than 5
    assert [c.number for c in pick_candidates(rows, objectives, [MAXIMIZE, "minimize"], top=2)] == [3, 1]


def test_ranking_intervals_and_paired_differences_on_made_up_numbers():
    candidates = [Candidate(7, {"lr": 0.1}, 0.995), Candidate(2, {"lr": 0.2}, 0.993), Candidate(5, {"lr": 0.3}, 0.990)]
    runs = [
        *runs_of(7, [0.990, 0.991, 0.992]),  # the search's best: confirmed below trial 2
        *runs_of(2, [0.9915, 0.9925, 0.9935]),  # better by 0.0015 on every seed: a sure difference
        *runs_of(5, [0.989, 0.995, 0.990]),  # mean 0.9913, but noisy: cannot be told from trial 2
    ]
    confirmed = rank_confirmed(candidates, runs, MAXIMIZE)
    assert [(c.rank, c.candidate.number) for c in confirmed] == [(1, 2), (2, 5), (3, 7)]
    best, noisy, sure = confirmed
    assert best.verdict == BEST and best.difference is None
    assert best.value == mean_interval([0.9915, 0.9925, 0.9935]) and best.seeds == (3, 4, 5)
    assert best.test_acc == mean_interval([0.990, 0.991, 0.992])
    # paired over the seeds: trial 7 is 0.0015 below trial 2 on each seed, sd 0, an interval without 0
    assert sure.difference.mean == pytest.approx(-0.0015) and sure.difference.high < 0
    assert sure.verdict == WORSE
    assert noisy.difference == paired_difference({3: 0.989, 4: 0.995, 5: 0.990}, {3: 0.9915, 4: 0.9925, 5: 0.9935})
    assert noisy.difference.contains(0) and noisy.verdict == TIED


def test_a_minimised_objective_ranks_the_lowest_first():
    runs = [*runs_of(0, [0.30, 0.31]), *runs_of(1, [0.20, 0.21])]
    confirmed = rank_confirmed([Candidate(0, {}, 0.1), Candidate(1, {}, 0.2)], runs, MINIMIZE)
    assert [c.candidate.number for c in confirmed] == [1, 0]
    assert confirmed[1].difference.mean == pytest.approx(0.10) and confirmed[1].verdict == WORSE


def test_missing_runs_one_seed_and_no_shared_seed():
    candidates = [Candidate(0, {}, 0.9), Candidate(1, {}, 0.9), Candidate(2, {}, 0.9), Candidate(3, {}, 0.9)]
    runs = [
        *runs_of(0, [0.95, 0.96]),
        *runs_of(1, [0.90]),  # one seed: no spread, no interval: the data cannot tell it apart
        *runs_of(2, [0.97], first_seed=9),  # no seed shared with the best: no paired difference
    ]  # trial 3 has no finished run: left out
    confirmed = rank_confirmed(candidates, runs, MAXIMIZE)
    assert [c.candidate.number for c in confirmed] == [2, 0, 1]
    assert confirmed[0].verdict == BEST and math.isnan(confirmed[0].value.low)
    assert confirmed[1].difference is None and confirmed[1].verdict == TIED
    assert confirmed[2].verdict == TIED
    # with missing seeds, the mean's order and the paired one may disagree: said as `better`
    order = rank_confirmed(
        [Candidate(0, {}, 0.9), Candidate(1, {}, 0.9)],
        [*runs_of(0, [0.90, 0.91, 0.50]), *runs_of(1, [0.80, 0.81])],
        MAXIMIZE,
    )  # trial 0's mean (0.77) is below trial 1's (0.805), yet on seeds 3 and 4 it is 0.1 above
    assert [c.candidate.number for c in order] == [1, 0] and order[1].verdict == BETTER


def test_confirmation_csv_round_trips_and_the_yaml_gets_the_winner(tmp_path):
    candidates = [Candidate(7, {"optimizer.lr": 0.1}, 0.995), Candidate(2, {"optimizer.lr": 0.2}, 0.993)]
    runs = [*runs_of(7, [0.990, 0.994]), *runs_of(2, [0.9915, 0.9935])]
    confirmed = rank_confirmed(candidates, runs, MAXIMIZE)
    write_confirmation(tmp_path, confirmed, "val_acc")
    rows = read_confirmation(tmp_path)
    assert [(r["rank"], r["trial"], r["verdict"], r["n_seeds"]) for r in rows] == [(1, 2, BEST, 2), (2, 7, TIED, 2)]
    first = rows[0]
    assert first["objective"] == "val_acc" and first["seeds"] == [3, 4] and first["optimizer.lr"] == 0.2
    assert first["value_mean"] == pytest.approx(0.9925) and first["value_sd"] == pytest.approx(0.001 * math.sqrt(2))
    assert (first["value_low"], first["value_high"]) == pytest.approx((confirmed[0].value.low, confirmed[0].value.high))
    assert first["diff_mean"] is None and first["search_value"] == 0.993
    assert rows[1]["diff_mean"] == pytest.approx(-0.0005) and rows[1]["diff_low"] < 0 < rows[1]["diff_high"]
    assert rows[1]["test_acc_mean"] == pytest.approx(0.9905)
    assert first["run_seconds"] is None  # a run's wall time not known
    assert confirmed_params(first) == {"optimizer.lr": 0.2}  # every other column is a figure
    assert read_confirmation(tmp_path / "nowhere") == []
    timed = [SeedRun(2, 3, 0.99, 0.99, 61.25), SeedRun(2, 4, 0.99, 0.99, 58.5)]
    write_confirmation(tmp_path, rank_confirmed(candidates[1:], timed, MAXIMIZE), "val_acc")
    assert read_confirmation(tmp_path)[0]["run_seconds"] == pytest.approx(119.8)  # summed, to 0.1 s

    (tmp_path / BEST_FILE).write_text(yaml.safe_dump({"best_trial": 7, "best_value": 0.995}))
    overrides = ["optimizer.lr=0.2", "seed=3"]
    write_confirmed(tmp_path, winner_entry(confirmed[0], confirmed, "val_acc", overrides, tmp_path / "confirm/2/3"))
    results = yaml.safe_load((tmp_path / BEST_FILE).read_text())
    assert results["best_trial"] == 7  # the search's own answer stays
    winner = results["confirmed"]
    assert winner["trial"] == 2 and winner["seeds"] == [3, 4] and winner["tied_with"] == [7]
    assert winner["value"]["mean"] == pytest.approx(0.9925) and winner["value"]["n"] == 2
    assert winner["command"] == "python train.py optimizer.lr=0.2 seed=3"
    assert (tmp_path / CONFIRMATION_FILE).is_file()


# The tiny sweep: 4 trials (lr, gamma, dropout by TPE) of 1 epoch, in the sweep's own process.
TRIALS, TOP, SEEDS = 4, 2, 2


def confirm_runs(sweep_dir: Path) -> dict[tuple[int, int], Path]:
    """The confirmation run folders that finished, by (search trial, seed): <sweep>/confirm/<trial>/<seed>/."""
    return {
        (int(run.parent.name), int(run.name)): run
        for run in sweep_dir.glob("confirm/*/*")
        if (run / SUMMARY_FILE).is_file()
    }


def finished_at(runs: dict[tuple[int, int], Path]) -> dict[tuple[int, int], int]:
    return {key: (run / SUMMARY_FILE).stat().st_mtime_ns for key, run in runs.items()}


@pytest.mark.slow
def test_a_sweep_confirms_its_best_on_fresh_seeds_as_its_last_stage(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    confirm = (f"hydra.sweeper.confirm.top={TOP}", f"hydra.sweeper.confirm.seeds={SEEDS}")
    result = train_py(*optuna_overrides(tiny_mnist, sweep_dir, f"hydra.sweeper.n_trials={TRIALS}", *confirm))
    assert result.returncode == 0, result.stdout + result.stderr

    trials = read_trials(sweep_dir)
    assert len(trials) == TRIALS and {row["state"] for row in trials} == {"COMPLETE"}
    searched = sorted(trials, key=lambda row: -float(row["value"]))[:TOP]  # the search's best two
    fresh = confirmation_seeds(0, 1, SEEDS)  # seed=0, one run per trial
    assert {summary(row["run_dir"])["seed"] for row in trials} == {0} and 0 not in fresh
    runs = confirm_runs(sweep_dir)
    assert set(runs) == {(int(row["number"]), seed) for row in searched for seed in fresh}
    for (number, seed), run in runs.items():
        said = summary(run)
        assert said["seed"] == seed and said["status"] == "completed"
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        params = next(row for row in trials if int(row["number"]) == number)
        assert f"seed={seed}" in overrides
        assert f"optimizer.lr={params['optimizer.lr']}" in overrides  # the search trial's own configuration

    # confirmation.csv, recomputed from the runs' summary.json files
    rows = read_confirmation(sweep_dir)
    assert [row["rank"] for row in rows] == [1, 2]
    assert {row["trial"] for row in rows} == {int(row["number"]) for row in searched}
    assert rows[0]["value_mean"] >= rows[1]["value_mean"]  # ranked by the objective over the fresh seeds
    objective = {key: summary(run)["objective_value"] for key, run in runs.items()}
    test_acc = {key: summary(run)["final_test_acc"] for key, run in runs.items()}
    best = rows[0]["trial"]
    for row in rows:
        number = row["trial"]
        assert row["objective"] == "val_acc" and row["seeds"] == fresh and row["n_seeds"] == SEEDS
        value = mean_interval([objective[number, seed] for seed in fresh])
        assert (row["value_mean"], row["value_sd"], row["value_low"], row["value_high"]) == pytest.approx(
            (value.mean, value.sd, value.low, value.high)
        )
        tested = mean_interval([test_acc[number, seed] for seed in fresh])
        assert (row["test_acc_mean"], row["test_acc_low"]) == pytest.approx((tested.mean, tested.low))
        seconds = sum(round(summary(runs[number, seed])["wall_time_s"], 1) for seed in fresh)
        assert row["run_seconds"] == pytest.approx(seconds, abs=0.15)
        search_row = next(r for r in trials if int(r["number"]) == number)
        assert row["search_value"] == pytest.approx(float(search_row["value"]))
    difference = paired_difference(
        {seed: objective[rows[1]["trial"], seed] for seed in fresh}, {seed: objective[best, seed] for seed in fresh}
    )
    assert (rows[1]["diff_mean"], rows[1]["diff_low"], rows[1]["diff_high"]) == pytest.approx(
        (difference.mean, difference.low, difference.high)
    )
    assert rows[1]["verdict"] == ("tied" if difference.contains(0) else "worse")

    # the confirmed winner in optimization_results.yaml; its command reproduces its first fresh seed's run
    results = yaml.safe_load((sweep_dir / BEST_FILE).read_text())
    winner = results["confirmed"]
    assert winner["trial"] == best and winner["seeds"] == fresh
    assert winner["value"]["mean"] == pytest.approx(rows[0]["value_mean"])
    assert winner["run_dir"] == str(sweep_dir / "confirm" / str(best) / str(fresh[0]))
    assert winner["command"].startswith("python train.py ") and winner["command"].endswith(f" seed={fresh[0]}")
    assert results["best_trial"] == int(searched[0]["number"])  # the search's own answer stays
    again = train_py(*winner["overrides"], f"hydra.run.dir={tmp_path / 'again'}")
    assert again.returncode == 0, again.stderr
    redone, original = summary(tmp_path / "again"), summary(winner["run_dir"])
    for figure in ("objective_value", "final_test_acc", "final_val_acc", "final_train_loss", "seed"):
        assert redone[figure] == original[figure], figure

    # the report prints the table and draws it
    report = tool("report", sweep_dir)
    assert report.returncode == 0, report.stderr
    assert f"confirmed on fresh seeds {' '.join(map(str, fresh))}, ranked by val_acc" in report.stdout
    table = report.stdout.split("confirmed on fresh seeds", 1)[1].splitlines()
    assert table[1].split()[:3] == ["rank", "trial", "verdict"]
    assert table[2].split()[:3] == ["1", str(best), "best"]
    assert table[3].split()[:3] == ["2", str(rows[1]["trial"]), rows[1]["verdict"]]
    assert f"{rows[0]['value_mean']:.4f} ± {rows[0]['value_sd']:.4f}" in table[2]
    assert f"confirmed winner: trial {best}" in report.stdout and winner["command"] in report.stdout
    assert (sweep_dir / CONFIRMATION_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_the_confirm_command_runs_only_what_is_missing(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = train_py(*optuna_overrides(tiny_mnist, sweep_dir, "hydra.sweeper.n_trials=3"))
    assert result.returncode == 0, result.stderr
    assert not (sweep_dir / CONFIRMATION_FILE).exists()  # top 0, the default: no confirmation
    command = [sys.executable, "-m", "cnnsweep", "confirm", str(sweep_dir), "--top", "2", "--seeds", "1"]

    # killed (-9, the whole process group) as its first run starts: that run is lost, the other never ran
    worker = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not list(sweep_dir.glob("confirm/*/*/.hydra")) and time.time() < deadline:
            time.sleep(0.05)
        assert list(sweep_dir.glob("confirm/*/*/.hydra")), "no confirmation run started"
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    confirm_study = optuna.load_study(study_name=confirm_study_name("test"), storage=study_url(sweep_dir))
    before = finished_at(confirm_runs(sweep_dir))
    assert len(before) < 2  # at most the run that was starting finished

    resumed = tool("confirm", sweep_dir, "--top", 2, "--seeds", 1)
    assert resumed.returncode == 0, resumed.stderr
    first = finished_at(confirm_runs(sweep_dir))
    assert len(first) == 2 and all(first[key] == when for key, when in before.items())  # finished runs not redone
    assert f"{2 - len(before)} of 2 runs to go" in resumed.stdout
    trials = confirm_study.trials
    assert sorted(
        (t.user_attrs[CONFIRMS], t.user_attrs[CONFIRM_SEED]) for t in trials if t.state.name == "COMPLETE"
    ) == sorted(first)
    lost = [t for t in trials if t.state.name == "FAIL"]
    assert all(t.user_attrs.get(REQUEUED) for t in lost)  # the killed run: failed, and its copy ran
    assert len(load_study(sweep_dir).trials) == 3  # the search did not go on

    more = tool("confirm", sweep_dir, "--top", 2, "--seeds", 2)  # one more fresh seed: only its runs
    assert more.returncode == 0, more.stderr
    assert "2 of 4 runs to go" in more.stdout
    second = finished_at(confirm_runs(sweep_dir))
    assert len(second) == 4 and all(second[key] == when for key, when in first.items())
    assert {seed for _, seed in second} == set(confirmation_seeds(0, 1, 2))
    assert [row["n_seeds"] for row in read_confirmation(sweep_dir)] == [2, 2]

    nothing = tool("confirm", sweep_dir, "--top", 2, "--seeds", 2)
    assert nothing.returncode == 0 and "0 of 4 runs to go" in nothing.stdout
    assert finished_at(confirm_runs(sweep_dir)) == second


def fake_sweep(
    folder: Path,
    complete: int,
    running: int = 0,
    sweeper: str = TARGET,
    storage: str = "sqlite:///${hydra.sweep.dir}/optuna.db",
    study_name: str = "made_up",
) -> Path:
    """A sweep folder with a multirun.yaml naming cnnsweep's sweeper and a study of made-up trials."""
    folder.mkdir(parents=True)
    config = {"hydra": {"sweeper": {"_target_": sweeper, "storage": storage, "study_name": study_name},
                        "sweep": {"dir": "elsewhere"}}}  # fmt: skip
    (folder / MULTIRUN_FILE).write_text(yaml.safe_dump(config))
    study = optuna.create_study(study_name="made_up", storage=study_url(folder), direction="maximize")
    for value in range(complete):
        study.add_trial(optuna.trial.create_trial(value=float(value)))
    for _ in range(running):
        study.ask()
    return folder


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (lambda tmp: tmp / "nowhere", ["--top", "2"], "is no sweep folder (it holds no multirun.yaml)"),
        (lambda tmp: fake_sweep(tmp / "s", 3), ["--top", "0"], "--top 0: give at least 1"),
        (lambda tmp: fake_sweep(tmp / "s", 3), ["--top", "2", "--seeds", "0"], "--seeds 0: give at least 1"),
        (lambda tmp: fake_sweep(tmp / "s", 1), ["--top", "2"], "has 1 COMPLETE trials, fewer than --top 2"),
        (lambda tmp: fake_sweep(tmp / "s", 3, running=1), ["--top", "2"], "still has trials [3] running or queued"),
        (
            lambda tmp: fake_sweep(tmp / "s", 3, sweeper="hydra_plugins.x.Y"),
            ["--top", "2"],
            "was not swept by cnnsweep",
        ),
        (
            lambda tmp: fake_sweep(tmp / "s", 3, study_name="other"),
            ["--top", "2"],
            "study 'other' is not in sqlite:///",
        ),
        (
            lambda tmp: fake_sweep(tmp / "s", 3, storage="${oc.env:CNNSWEEP_TEST_UNSET}"),
            ["--top", "2"],
            "Environment variable 'CNNSWEEP_TEST_UNSET' not found",
        ),
    ],
)
def test_bad_input_is_refused_in_one_line_before_any_run(tmp_path, capsys, make, args, message):
    folder = make(tmp_path)
    assert confirm_tool.main([str(folder), *args]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and message in line
    assert not list(tmp_path.rglob(CONFIRMATION_FILE)) and not list(tmp_path.rglob("confirm"))


def test_a_sweep_with_bad_confirm_settings_is_refused_before_any_trial(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = train_py(
        *optuna_overrides(tiny_mnist, sweep_dir, "hydra.sweeper.confirm.top=2", "hydra.sweeper.confirm.seeds=0")
    )
    assert "hydra.sweeper.confirm.seeds=0: confirming needs at least 1 fresh seed" in error_line(result, 2)
    assert not list(sweep_dir.glob("[0-9]*"))  # no trial ran


@pytest.mark.slow  # making an MLflow store takes about 20 s
def test_the_mlflow_parent_run_gets_the_confirmed_winner(tmp_path, caplog):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from cnnsweep.track import MLflowSweepTracker, SweepTrackers

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MLflowSweepTracker(tracking_uri=uri, experiment="confirm")
    without = type("NoConfirmation", (), {"start": lambda self, *a: None, "end": lambda self, *a: None})()
    trackers = SweepTrackers([tracker, without])
    trackers.start(tmp_path / "sweep", "lr", ["maximize"], ["val_acc"])
    trackers.end([{"number": 7, "values": [0.995], "params": {"optimizer.lr": 0.1}}])  # the search ends first
    candidates = [Candidate(7, {"optimizer.lr": 0.1}, 0.995), Candidate(2, {"optimizer.lr": 0.2}, 0.993)]
    confirmed = rank_confirmed(candidates, [*runs_of(7, [0.990, 0.994]), *runs_of(2, [0.9915, 0.9935])], MAXIMIZE)
    entry = winner_entry(confirmed[0], confirmed, "val_acc", ["optimizer.lr=0.2", "seed=3"], None)
    trackers.confirmed(entry)
    assert trackers.failed == {} and trackers.loggers == [tracker, without]  # one without confirmed() is skipped

    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(tracker.parent_id)
    assert parent.info.status == "FINISHED"
    metrics, tags = parent.data.metrics, parent.data.tags
    assert metrics["best.trial"] == 7 and metrics["confirmed.trial"] == 2 and metrics["confirmed.n_seeds"] == 2
    assert metrics["confirmed.val_acc.mean"] == pytest.approx(0.9925)
    assert metrics["confirmed.val_acc.low"] == pytest.approx(confirmed[0].value.low)
    assert metrics["confirmed.test_acc.mean"] == pytest.approx(0.9905)
    assert (
        tags["confirmed.optimizer.lr"] == "0.2"
        and tags["confirmed.command"] == "python train.py optimizer.lr=0.2 seed=3"
    )
    saved = Path(client.download_artifacts(tracker.parent_id, "confirmed.json", str(tmp_path)))
    assert yaml.safe_load(saved.read_text())["tied_with"] == [7]


def fake_sweeper(folder: Path, values: list[float]) -> SimpleNamespace:
    """What a ConfirmationStage reads of its StudySweeper, over a SQLite study of made-up COMPLETE trials."""
    distribution = FloatDistribution(0.001, 1.0, log=True)
    study = optuna.create_study(study_name="made_up", storage=study_url(folder), direction="maximize")
    for number, value in enumerate(values):
        params = {"optimizer.lr": 0.01 * (number + 1)}
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions={"optimizer.lr": distribution}, value=value)
        )
    storage = open_storage(study_url(folder))
    return SimpleNamespace(
        rdb=storage, lanes=Lanes(storage), study_name="made_up", study_id=storage.get_study_id_from_name("made_up"),
        objectives=["val_acc"], directions=[MAXIMIZE], max_failure_rate=0.25, sweep_dir=folder,
        config=OmegaConf.create({"seed": 10, "hydra": {"sweeper": {}, "launcher": {}}}),
        distributions={"optimizer.lr": distribution}, fixed_params={}, fixed_overrides=["trainer.epochs=1"],
    )  # fmt: skip


class FakeLauncher:
    """Jobs that return a made-up objective from their overrides (no training); `interrupt` jobs are stopped."""

    def __init__(self, interrupt: int = 0) -> None:
        self.launched: list[tuple[int, tuple[str, ...]]] = []
        self.interrupt = interrupt

    def __call__(self, overrides: tuple[str, ...], number: int) -> JobReturn:
        self.launched.append((number, overrides))
        if len(self.launched) <= self.interrupt:
            return JobReturn(status=JobStatus.FAILED, _return_value=Interrupted(signal.SIGTERM))
        given = dict(override.split("=", 1) for override in overrides)
        value = 0.9 + float(given["optimizer.lr"]) + int(given["seed"]) / 1000
        return JobReturn(status=JobStatus.COMPLETED, _return_value=value)


def test_the_stage_queues_each_configuration_and_seed_once_and_reruns_only_what_is_missing(tmp_path):
    sweeper = fake_sweeper(tmp_path, [0.90, 0.95, 0.93])  # trials 1 and 2 are the best two
    launcher = FakeLauncher(interrupt=1)  # the first job is stopped by SIGTERM: its run is queued again
    stage = ConfirmationStage(sweeper, 2, 2, launcher)
    assert stage.prepare() == 4 and stage.seeds == [11, 12]  # seed 10, one run per trial: 11 and 12 are fresh
    stage.lane()
    assert isinstance(stage.policy.errors[0], Interrupted) and len(launcher.launched) == 1
    number, overrides = launcher.launched[0]
    assert overrides == ("optimizer.lr=0.02", "trainer.epochs=1", "seed=11", "hydra.sweep.subdir=confirm/1/11")

    again = ConfirmationStage(sweeper, 2, 2, launcher)
    assert again.prepare() == 4  # nothing finished yet; the interrupted run was queued again, not twice
    again.lane()
    assert again.policy.errors == [] and len(launcher.launched) == 5
    # seed by seed: a confirmation stopped midway has every configuration on the same seeds
    assert launcher.launched[1][1][-1] == "hydra.sweep.subdir=confirm/2/11"
    ran = sorted(o[-1] for _, o in launcher.launched[1:])
    assert ran == [f"hydra.sweep.subdir=confirm/{t}/{s}" for t in (1, 2) for s in (11, 12)]
    confirmed = again.write_results()
    assert confirmed["trial"] == 2 and confirmed["seeds"] == [11, 12]  # lr 0.03 makes the larger made-up value
    rows = read_confirmation(tmp_path)
    assert [row["trial"] for row in rows] == [2, 1]
    assert [row["value_mean"] for row in rows] == pytest.approx([0.9415, 0.9315])
    assert rows[1]["diff_mean"] == pytest.approx(-0.01) and rows[1]["verdict"] == WORSE

    # a (configuration, seed) queued twice (two workers at one moment) runs once; nothing else runs again
    study = optuna.load_study(study_name=confirm_study_name("made_up"), storage=sweeper.rdb)
    study.enqueue_trial({"optimizer.lr": 0.02}, user_attrs={CONFIRMS: 1, CONFIRM_SEED: 11})
    last = ConfirmationStage(sweeper, 2, 2, launcher)
    assert last.prepare() == 0
    last.lane()
    assert len(launcher.launched) == 5
    extra = study.trials[-1]
    assert extra.state.name == "FAIL" and extra.user_attrs[REASON].startswith("not run: trial ")


@pytest.mark.slow
def test_a_multi_objective_sweep_confirms_its_front_ranked_by_the_first_objective(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = train_py(
        *optuna_overrides(
            tiny_mnist, sweep_dir, "objective=[val_acc,n_params]", "model.widths.6=choice(16,120)",
            "hydra.sweeper.n_trials=4", "hydra.sweeper.confirm.top=3", "hydra.sweeper.confirm.seeds=1",
        )
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    front = yaml.safe_load((sweep_dir / BEST_FILE).read_text())["pareto_front"]
    rows = read_confirmation(sweep_dir)
    assert {row["trial"] for row in rows} == {entry["number"] for entry in front[:3]}
    for row in rows:  # one seed: a mean and no interval, ranked by val_acc
        [seed] = row["seeds"]
        assert (
            row["value_mean"] == summary(sweep_dir / "confirm" / str(row["trial"]) / str(seed))["objectives"]["val_acc"]
        )
        assert row["value_low"] is None and row["objective"] == "val_acc"
    assert [row["value_mean"] for row in rows] == sorted((row["value_mean"] for row in rows), reverse=True)
    assert yaml.safe_load((sweep_dir / BEST_FILE).read_text())["confirmed"]["trial"] == rows[0]["trial"]


def test_a_confirmation_job_is_told_by_its_folder_and_reports_to_no_search_trial():
    from cnnsweep.sweep.trial import connect_trial, is_confirmation, trial_place

    def job(subdir: str) -> OmegaConf:
        sweeper = {"_target_": TARGET, "storage": "sqlite:///nowhere/never-opened.db", "study_name": "s"}
        return OmegaConf.create(
            {"sweeper": sweeper, "sweep": {"dir": "multirun/s", "subdir": subdir}, "job": {"num": 3}}
        )

    assert is_confirmation(job("confirm/7/12"))
    assert not is_confirmation(job("3")) and not is_confirmation(job("3/1"))  # a trial's, a repeat's folder
    assert connect_trial(job("confirm/7/12")) is None and trial_place(job("confirm/7/12")) is None
