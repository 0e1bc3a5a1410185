"""`logger=...` on real runs and sweeps of train.py: what TensorBoard's reader and MLflow's client read back,
a killed run resumed into the same MLflow run, and a sweep as a parent run with a child per trial."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from cnnsweep.artifacts import read_csv, read_json
from cnnsweep.files import METRICS_FILE, TRIALS_FILE
from cnnsweep.records import RunFolder
from cnnsweep.track.mlflow import PARENT_FILE, RUN_ID_FILE, STATE_TAG, TRIAL_TAG, read_id

from helpers import (
    REPO,
    grid_study_overrides,
    readme_files,
    summary,
    tiny_overrides,
    train_py,
    wait_for_rows,
    write_files,
)

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")


def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def scalars(event_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(event_dir))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


@pytest.mark.slow  # train.py with both trackers (MLflow's import and store: seconds); test_track.py is the quick loop's
def test_a_run_writes_its_epochs_to_tensorboard_mlflow_and_readmes_own_logger(tiny_mnist, tmp_path):
    files = readme_files("Track experiments")  # README's ten-line logger, from a folder of the user's own
    assert set(files) == {"printlog.py", "myconf/logger/print.yaml"}
    write_files(tmp_path, files)
    run_dir, uri = tmp_path / "run", store(tmp_path)
    result = train_py(
        *tiny_overrides(tiny_mnist, "trainer.epochs=2", "data.val_size=100", "optimizer.lr=0.07"),
        "--config-dir", "myconf", "logger=[tensorboard,mlflow,print]", f"logger.mlflow.tracking_uri={uri}",
        f"hydra.run.dir={run_dir}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = RunFolder(run_dir).read_metrics()
    expected = [(row["epoch"], pytest.approx(row["val_acc"])) for row in rows]
    assert len(expected) == 2 and scalars(run_dir / "tensorboard", "val/acc") == expected
    run_id = read_id(run_dir / RUN_ID_FILE)
    run = client(uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["cnnsweep.status"] == "completed"
    assert run.data.params["optimizer.lr"] == "0.07" and run.data.params["trainer.epochs"] == "2"
    history = client(uri).get_metric_history(run_id, "val_acc")
    assert [(m.step, m.value) for m in history] == expected
    assert {a.path for a in client(uri).list_artifacts(run_id)} == {"summary.json", METRICS_FILE, "best.pt"}
    printed = result.stdout.splitlines()  # README's PrintLogger
    n_params = summary(run_dir)["n_params"]
    assert f"{run_dir.parent.name}/{run_dir.name}: {n_params:,} parameters" in printed
    assert [line for line in printed if line[:2] in ("1 ", "2 ")] == [
        f"{row['epoch']} {row['test_acc']}" for row in rows
    ]


@pytest.mark.slow  # a run killed after its first epoch, then resumed to its third
def test_a_killed_run_resumed_continues_its_mlflow_run_with_each_epoch_once(tiny_mnist, tmp_path):
    run_dir, uri = tmp_path / "run", store(tmp_path)
    overrides = tiny_overrides(tiny_mnist, "trainer.epochs=3", "data.val_size=100", "trainer.compile=false")
    process = train_py(*overrides, "logger=mlflow", f"logger.mlflow.tracking_uri={uri}", f"hydra.run.dir={run_dir}",
                       wait=False)  # fmt: skip
    try:
        wait_for_rows(run_dir, 1, process)
    finally:
        process.send_signal(signal.SIGKILL)  # no goodbye: the MLflow run is left RUNNING
        process.wait(timeout=60)
    run_id = read_id(run_dir / RUN_ID_FILE)
    result = train_py(f"resume={run_dir}")  # replays the restored epoch to MLflow, which skips it: held already
    assert result.returncode == 0, result.stderr
    assert read_id(run_dir / RUN_ID_FILE) == run_id  # the same MLflow run
    runs = client(uri).search_runs([client(uri).get_experiment_by_name("cnnsweep").experiment_id])
    assert [(run.info.run_id, run.info.status) for run in runs] == [(run_id, "FINISHED")]
    rows = RunFolder(run_dir).read_metrics()
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    for key in ("val_acc", "train_loss"):  # each epoch once, with the value metrics.csv holds
        recorded = [(m.step, m.value) for m in client(uri).get_metric_history(run_id, key)]
        assert recorded == [(row["epoch"], pytest.approx(row[key])) for row in rows], key


SWEPT = ("model.widths.6", "optimizer.lr")  # the tracked sweep's grid


@pytest.fixture(scope="module")
def tracked_sweep(tiny_mnist, tmp_path_factory) -> tuple[Path, str]:
    """A finished sweep logged to both trackers: a grid of two widths (one over budget) and three learning rates
    (one diverges: its trial fails in its job)."""
    folder = tmp_path_factory.mktemp("tracked")
    sweep_dir, uri = folder / "sweep", store(folder)
    result = train_py(
        *grid_study_overrides(tiny_mnist, sweep_dir, "trainer.compile=false", "model.widths.6=choice(16,400)",
                              "optimizer.lr=choice(0.05,0.2,1e9)"),
        "logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={uri}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return sweep_dir, uri


@pytest.mark.slow  # a tracked sweep (shared with the browser test)
def test_a_sweep_is_a_parent_run_with_a_child_per_trial_and_its_best(tracked_sweep, tmp_path):
    sweep_dir, uri = tracked_sweep
    trials = {row["number"]: row for row in read_csv(sweep_dir / TRIALS_FILE)}
    assert sorted(row["state"] for row in trials.values()) == ["COMPLETE"] * 2 + ["FAIL"] + ["PRUNED"] * 3
    mlflow_client = client(uri)
    parent_id = read_id(sweep_dir / PARENT_FILE)
    runs = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("cnnsweep").experiment_id])
    children = {int(run.data.tags[TRIAL_TAG]): run for run in runs if run.info.run_id != parent_id}
    assert len(runs) == 7 and set(children) == set(trials)
    status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}  # Optuna's state -> MLflow's status
    for number, row in trials.items():
        child, swept = children[number], {key: str(row[key]) for key in SWEPT}
        assert child.data.tags["mlflow.parentRunId"] == parent_id and child.data.tags[STATE_TAG] == row["state"]
        assert child.info.status == status[row["state"]]
        if row["state"] != "PRUNED":  # its job's own run, holding the job's whole config (lists kept whole)
            assert child.data.params["optimizer.lr"] == swept["optimizer.lr"]
        if row["state"] == "COMPLETE":  # the epochs, and the value the study holds
            value = pytest.approx(row["value"])
            assert child.data.metrics["val_acc"] == value and child.data.metrics["objective.val_acc"] == value
            assert scalars(sweep_dir / str(number) / "tensorboard", "objective/val_acc")[0][1] == value
        elif row["state"] == "FAIL":  # diverged in its job: its run, ended as failed, and no value
            assert row["optimizer.lr"] == 1e9 and row["value"] is None and "objective.val_acc" not in child.data.metrics
        else:  # over budget: never ran, no folder, a child run all the same, holding the trial's parameters
            assert not (sweep_dir / str(number)).exists() and child.data.params == swept
    best = max((row for row in trials.values() if row["state"] == "COMPLETE"), key=lambda row: row["value"])
    parent = mlflow_client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.params["objective.0"] == "val_acc (maximize)"
    assert parent.data.metrics["best.trial"] == best["number"]
    assert parent.data.metrics["best.val_acc"] == pytest.approx(best["value"])
    assert {key: parent.data.tags[f"best.{key}"] for key in SWEPT} == {key: str(best[key]) for key in SWEPT}
    front = read_json(Path(mlflow_client.download_artifacts(parent_id, "best_trials.json", str(tmp_path))))
    assert front == {
        "best_trials": [
            {"number": best["number"], "values": {"val_acc": pytest.approx(best["value"])},
             "params": {key: best[key] for key in SWEPT}}
        ]
    }  # fmt: skip


def test_the_bench_times_each_tracker_against_an_epoch(tmp_path, monkeypatch):
    from cnnsweep.schema import compose_config
    from cnnsweep.tools.bench import logger_costs

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # where a run's default store would be
    costs = logger_costs(compose_config(["logger=[tensorboard,mlflow]"]), epoch_s=40.0, epochs=5)
    assert [cost["logger"] for cost in costs] == ["tensorboard", "mlflow"]
    for cost in costs:
        assert 0 < cost["log_epoch_ms"] <= cost["log_epoch_max_ms"]
        assert cost["share_of_epoch"] == pytest.approx(cost["log_epoch_ms"] / 1000 / 40.0)
    assert list(tmp_path.iterdir()) == []  # timed in a store of its own, not the working folder's


# ---------------------------------------------------------------- looked at as a user would


@pytest.mark.slow  # an MLflow server (about 20 s to start) and a real headless browser
def test_mlflow_ui_shows_a_sweeps_trials_with_a_chart(tracked_sweep, chromium):
    """`mlflow server` over the store a sweep wrote; headless Chromium opens the compare page of its two
    trained trials: both names and a Plotly chart on the page, and a screenshot for the README."""
    import subprocess
    import time
    import urllib.parse
    import urllib.request

    from mlflow.tracking import MlflowClient

    from browser import RENDER, browse, page_text, program
    from postgres import free_port

    _, uri = tracked_sweep
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("cnnsweep").experiment_id
    children = client.search_runs([experiment], filter_string="tags.`cnnsweep.state` = 'COMPLETE'")
    assert len(children) == 2

    port = free_port()
    command = [program("mlflow") or "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.read() == b"OK":
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "mlflow server did not start"
            time.sleep(1)
        runs = urllib.parse.quote(json.dumps([run.info.run_id for run in children]))
        page = f"{url}/#/compare-runs?runs={runs}&experiments=" + urllib.parse.quote(json.dumps([experiment]))
        dom = browse(chromium, *RENDER, "--dump-dom", page).stdout
        text = page_text(dom)
        assert "Comparing 2 Runs from 1 Experiment" in text, text[:1000]
        names = sorted(run.info.run_name for run in children)
        assert [name in text for name in names] == [True, True] and "optimizer.lr" in text
        assert "js-plotly-plot" in dom  # the parallel-coordinates chart of params and metrics
        screenshot = REPO / "docs" / "mlflow_sweep.png"
        browse(chromium, *RENDER, f"--screenshot={screenshot}", page)
        assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 20_000
    finally:
        server.terminate()
        server.wait(timeout=30)
