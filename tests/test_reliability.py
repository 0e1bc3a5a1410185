"""No lost work: runs killed at any moment resume to the same result; signals stop cleanly; bad inputs are
refused in one line before any training."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from cnnsweep.artifacts import read_csv
from cnnsweep.cli import check_run
from cnnsweep.errors import UserError
from cnnsweep.files import METRICS_FILE, TRIALS_FILE
from cnnsweep.records import RunStatus
from cnnsweep.sweep.attrs import REASON, REQUEUED
from cnnsweep.train.run import train

from helpers import (
    CONF,
    IN_PROCESS,
    compose_train,
    load_study,
    metrics,
    summary,
    sweep_overrides,
    tiny_overrides,
    train_py,
    wait_for_rows,
)


@pytest.fixture(scope="module")
def uninterrupted(tiny_mnist, tmp_path_factory) -> Path:
    """A 5-epoch tiny run that nothing stops: the reference for every resumed run."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = train_py(*tiny_overrides(tiny_mnist, "trainer.epochs=5", "data.val_size=100"), f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir


def start_run(tiny_mnist: Path, run_dir: Path) -> subprocess.Popen:
    overrides = tiny_overrides(tiny_mnist, "trainer.epochs=5", "data.val_size=100")
    return train_py(*overrides, f"hydra.run.dir={run_dir}", wait=False)


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_same_metrics(tiny_mnist, tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    process = start_run(tiny_mnist, run_dir)
    wait_for_rows(run_dir, 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = len(metrics(run_dir))
    assert summary(run_dir)["status"] == RunStatus.RUNNING and killed_at < 5

    original = (run_dir / ".hydra" / "config.yaml").read_text()
    result = train_py(f"resume={run_dir}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert metrics(run_dir) == metrics(uninterrupted)
    resumed = summary(run_dir)
    assert resumed["status"] == RunStatus.COMPLETED and resumed["resumed_after_epoch"] in range(1, killed_at + 1)
    assert resumed["objective_value"] == summary(uninterrupted)["objective_value"]
    assert (run_dir / ".hydra" / "config.yaml").read_text() == original  # the run's own record is kept
    assert list((run_dir / ".hydra").glob("resumed-*/overrides.yaml"))
    log = (run_dir / "train.log").read_text()
    assert "epoch 1/5" in log and f"resume: continuing {run_dir} after epoch" in log


SLOW_CHECKPOINT = """
import io, runpy, sys, time
import cnnsweep.artifacts as artifacts
write_atomically, calls = artifacts.write_atomically, []

def half_then_wait(path, write):
    if path.name == "last.pt":
        calls.append(path)
        if len(calls) == 3:  # the third epoch's checkpoint: write half, then hang until killed
            def write_half(file):
                buffer = io.BytesIO()
                write(buffer)
                file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                file.flush()
                print("HALF-WRITTEN", flush=True)
                time.sleep(120)
            return write_atomically(path, write_half)
    return write_atomically(path, write)

artifacts.write_atomically = half_then_wait
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_a_kill_in_the_middle_of_writing_a_checkpoint_loses_nothing(tiny_mnist, tmp_path, uninterrupted):
    runner = tmp_path / "slow_checkpoint.py"
    runner.write_text(SLOW_CHECKPOINT)
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(tiny_mnist, "trainer.epochs=5", "data.val_size=100")
    process = train_py(*overrides, f"hydra.run.dir={run_dir}", wait=False, runner=runner)
    for line in process.stdout:
        if "HALF-WRITTEN" in line:
            break
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list((run_dir / "checkpoints").glob(".last.pt.*.tmp")), "the kill came mid-write"
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 2  # the previous checkpoint, whole

    result = train_py(f"resume={run_dir}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert metrics(run_dir) == metrics(uninterrupted)
    assert not list(run_dir.rglob(".*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize(("signal_number", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_stop_cleanly_and_the_run_resumes(
    tiny_mnist, tmp_path, uninterrupted, signal_number, exit_code
):
    run_dir = tmp_path / "run"
    process = start_run(tiny_mnist, run_dir)
    wait_for_rows(run_dir, 1, process)
    process.send_signal(signal_number)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == exit_code, output
    name = signal.Signals(signal_number).name
    stopped = summary(run_dir)
    assert stopped["status"] == RunStatus.INTERRUPTED and stopped["error"] == f"Interrupted: interrupted by {name}"
    assert f"error: interrupted by {name}" in output and "Traceback" not in output
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == stopped["epochs_run"] == len(metrics(run_dir))  # consistent with each other

    result = train_py(f"resume={run_dir}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert metrics(run_dir) == metrics(uninterrupted)


@pytest.mark.parametrize("compile", ["auto", pytest.param("true", marks=pytest.mark.slow)])  # compiling: seconds
def test_a_diverging_run_stops_at_once_and_says_where(tiny_mnist, tmp_path, compile):
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(tiny_mnist, "optimizer.lr=1e9", "trainer.epochs=3", f"trainer.compile={compile}")
    result = train_py(*overrides, f"hydra.run.dir={run_dir}")
    assert result.returncode == 1
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and "training diverged: loss nan at epoch 1, batch" in lines[0]
    stopped = summary(run_dir)
    assert stopped["status"] == RunStatus.DIVERGED and stopped["diverged_at"]["epoch"] == 1
    assert stopped["compile"]["compiled"] is (compile == "true")  # auto: eager for so few steps
    # seeded: steps of lr 1e9 throw the weights so far that the fourth batch's loss is NaN
    assert stopped["diverged_at"]["batch"] == 4 and stopped["epochs_run"] == 0
    assert "training diverged: loss nan at epoch 1, batch 4 " in lines[0]  # the line names the same place
    assert not (run_dir / METRICS_FILE).exists()


@pytest.mark.slow
def test_resuming_with_a_checkpoint_of_another_architecture_is_refused(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    config["model"]["widths"][1] = 24
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    result = train_py(f"resume={run_dir}")
    assert result.returncode == 2
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and "last.pt does not match the model in the run's config" in lines[0]
    assert "size mismatch" in lines[0]


@pytest.mark.slow
def test_resume_refuses_other_overrides_and_sweeps(uninterrupted):
    result = train_py(f"resume={uninterrupted}", "optimizer.lr=0.5")
    assert result.returncode == 2 and "drop the other overrides ['optimizer.lr=0.5']" in result.stdout + result.stderr
    result = train_py("--multirun", f"resume={uninterrupted}")
    assert result.returncode == 1 and "it cannot be swept" in result.stdout + result.stderr  # the job's error


OPTIMIZERS = ", ".join(sorted(path.stem for path in (CONF / "optimizer").glob("*.yaml")))  # adamw, rmsprop, sgd
# (overrides, what the one line says): refused while the config is composed, before Hydra makes anything
REFUSED_WHEN_COMPOSED = [
    (["optimizer=nadam"], f"optimizer=nadam is not an option of the optimizer group; allowed: {OPTIMIZERS}"),
    (["optimizer.lrr=0.1"], "optimizer.lrr is not a key of optimizer; allowed keys: lr, momentum"),
    (
        ["logger=mlflow", "logger.mlflow.experimnt=x"],
        "logger.mlflow.experimnt is not a key of logger.mlflow; allowed keys: tracking_uri, experiment, log_checkpoint",
    ),
    (["optimizer=rmsprop", "optimizer.nesterov=true"], "optimizer.nesterov is not a key of optimizer; allowed keys"),
    (["optimizer.lr=fast"], "optimizer.lr: Value 'fast' of type 'str' could not be converted to Float"),
    (["trainer.epochs=1.5"], "trainer.epochs: Value '1.5' of type 'float' could not be converted to Integer"),
    # mandatory values left unset (???), anywhere in the config, and values that cannot be resolved
    (["data=image_folder"], "data.root is not set (??? in the config): give data.root=VALUE on the command line"),
    (
        ["model.widths=???", "optimizer.lr=???"],
        "model.widths, optimizer.lr are not set (??? in the config): give "
        "model.widths=VALUE optimizer.lr=VALUE on the command line",
    ),
    (["data=image_folder", "data.root=/no/such/folder"], "data.root=/no/such/folder is not a folder"),
    (["model.num_classes=${data.classes}"], "model.num_classes: Interpolation key 'data.classes' not found"),
]
# refused when the run's objects are built, before any data is read or any step taken
REFUSED_WHEN_BUILT = [
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 must be positive"),
    (["optimizer.lr=0"], "optimizer.lr=0.0 must be positive"),
    (["optimizer.momentum=-1"], "Invalid momentum value: -1.0"),
    (["model.dropout=1.0"], "model.dropout=1.0 is outside [0, 1)"),
    (["model.dropout=-0.1"], "model.dropout=-0.1 is outside [0, 1)"),
    (["model.widths=[10,20]"], "model.widths has 2 entries but model.layout has 7 convolutions"),
    (["model.widths=[10,20,10,0,10,10,120]"], "model.widths must be positive integers"),
    (["data.batch_size=0"], "data.batch_size=0 must be a positive integer"),
    (["trainer.epochs=0"], "trainer.epochs=0 must be a positive integer"),
    (["data.val_size=600"], "data.val_size=600 leaves no training images out of 600"),
]


@pytest.mark.parametrize(("overrides", "message"), REFUSED_WHEN_COMPOSED)
def test_config_mistakes_are_refused_while_composing(overrides, message):
    with pytest.raises(UserError) as error:
        check_run(overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(("overrides", "message"), REFUSED_WHEN_BUILT)
def test_bad_values_are_refused_before_any_training(tiny_mnist, tmp_path, overrides, message):
    with pytest.raises(UserError) as error:
        train(compose_train(tiny_overrides(tiny_mnist, *overrides)), tmp_path)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / METRICS_FILE).exists() and not (tmp_path / "checkpoints").exists()
    if overrides[0].startswith("model."):  # the model is built first: a bad one leaves nothing behind
        assert list(tmp_path.iterdir()) == []
    else:  # after that, summary.json says how the run ended
        assert summary(tmp_path)["status"] == RunStatus.FAILED


@pytest.mark.parametrize(
    ("overrides", "message", "folder_made"),
    [(*REFUSED_WHEN_COMPOSED[0], False), (*REFUSED_WHEN_COMPOSED[1], False), (*REFUSED_WHEN_COMPOSED[5], False),
     (*REFUSED_WHEN_BUILT[0], True), (*REFUSED_WHEN_BUILT[3], True)],
)  # fmt: skip
def test_train_py_says_it_in_one_line_and_exits_2(tiny_mnist, tmp_path, overrides, message, folder_made):
    run_dir = tmp_path / "run"
    result = train_py(*tiny_overrides(tiny_mnist, *overrides), f"hydra.run.dir={run_dir}")
    assert result.returncode == 2, result.stdout + result.stderr
    output = result.stdout + result.stderr
    error_lines = [line for line in output.splitlines() if "error" in line.lower()]
    assert len(error_lines) == 1 and message in error_lines[0], output
    assert "Traceback" not in output
    assert run_dir.exists() == folder_made and not (run_dir / METRICS_FILE).exists()


@pytest.mark.slow
def test_a_sweep_with_an_unset_value_stops_in_one_line_before_any_trial_trains(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = train_py(
        "--multirun", "data=image_folder", "hparams_search=lr_gamma_dropout", "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={sweep_dir}",
    )  # fmt: skip
    assert result.returncode == 2
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error:")]
    assert errors == [
        "error: trial 0 cannot start: data.root is not set (??? in the config): give data.root=VALUE on the "
        f"command line; trials on record in {sweep_dir / TRIALS_FILE}"
    ]
    assert not list(sweep_dir.glob(f"*/{METRICS_FILE}"))  # no trial trained


def test_an_output_folder_that_cannot_be_made_is_refused(tiny_mnist, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = train_py(*tiny_overrides(tiny_mnist), f"hydra.run.dir={blocker / 'run'}")
    assert result.returncode == 2
    assert f"cannot create the output folder {blocker / 'run'}: {blocker} is a file, not a folder" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_missing_or_corrupt_mnist_is_named_in_one_line(tiny_mnist, tmp_path, damage):
    root = tmp_path / "data"
    shutil.copytree(tiny_mnist, root)
    images = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    if damage == "missing":
        images.unlink()
        expected = f"MNIST could not be read from {root / 'MNIST' / 'raw'}"
    else:
        images.write_bytes(images.read_bytes()[:-784])
        expected = f"{images} is 156,032 bytes but its header promises 200 images (156,816 bytes)"
    result = train_py(*tiny_overrides(root), f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and expected in lines[0]


def wait_for_training(sweep_dir: Path, process: subprocess.Popen, before: set[Path] = frozenset()) -> None:
    """Wait until one of the sweep's trials, not among `before` (metrics.csv paths), has finished an epoch."""
    deadline = time.time() + 120
    while not set(sweep_dir.glob(f"*/{METRICS_FILE}")) - before:
        assert process.poll() is None and time.time() < deadline, "no trial started training"
        time.sleep(0.1)


def params_of(trials: list[optuna.trial.FrozenTrial]) -> list[tuple]:
    return sorted({tuple(sorted(trial.params.items())) for trial in trials})


@pytest.mark.slow
def test_a_sweep_killed_then_interrupted_keeps_a_consistent_study_and_reruns_every_lost_trial(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = sweep_overrides(
        tiny_mnist, sweep_dir, "hparams_search=lr_gamma_dropout", "hydra.sweeper.study_name=test",
        "hydra/sweeper/pruner=nop", "hydra.sweeper.n_trials=3",
    )  # fmt: skip
    # killed outright (SIGKILL: no handler runs) while its first trial trains in the sweep's own process
    killed = train_py(*args, "trainer.epochs=40", *IN_PROCESS, wait=False)
    try:
        wait_for_training(sweep_dir, killed)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert [t.number for t in load_study(sweep_dir).trials if t.state.name == "RUNNING"] == [0]

    # rerun, its trials in worker processes, then Ctrl-C (it reaches the whole process group) once one trains
    sweep = train_py(*args, "trainer.epochs=30", wait=False, start_new_session=True)
    wait_for_training(sweep_dir, sweep, before={sweep_dir / "0" / METRICS_FILE})
    os.killpg(sweep.pid, signal.SIGINT)
    output = sweep.communicate(timeout=120)[0]
    assert sweep.returncode == 130 and "Traceback" not in output, output
    [said] = [line for line in output.splitlines() if line.startswith("error:")]
    assert said == (
        f"error: sweep interrupted by SIGINT: trials on record in {sweep_dir / TRIALS_FILE}; "
        "rerun the same command to continue"
    )
    stopped = load_study(sweep_dir).trials
    assert not [t for t in stopped if t.state.name == "RUNNING"], "nothing is left RUNNING"
    failed = [t for t in stopped if t.state.name == "FAIL"]
    rows = {row["number"]: row for row in read_csv(sweep_dir / TRIALS_FILE)}
    assert {number: row["state"] for number, row in rows.items()} == {t.number: t.state.name for t in stopped}
    assert failed[0].number == 0 and rows[0]["reason"].startswith("interrupted: worker")  # the killed one
    interrupted = failed[1:]
    assert interrupted and all(t.user_attrs[REASON] == "Interrupted: interrupted by SIGINT" for t in interrupted)
    assert all(t.user_attrs[REQUEUED] for t in failed)
    waiting = [t for t in stopped if t.state.name == "WAITING"]
    assert params_of(waiting) == params_of(failed) and len(waiting) == len(params_of(failed))  # each queued once

    # the same study, continued; its trials one at a time in this process (no worker processes to start)
    resumed = train_py(*args, "trainer.epochs=2", *IN_PROCESS)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    trials = load_study(sweep_dir).trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3 and len(trials) == len(failed) + 3  # no other trial than these
    assert set(params_of(failed)) <= set(params_of(complete))  # every lost trial's parameters ran again


def test_a_sweep_reading_an_unset_variable_is_refused_in_one_line(tmp_path):
    sweep_dir = tmp_path / "sweep"
    storage = "hydra.sweeper.storage=${oc.env:CNNSWEEP_UNSET_FOR_TEST}"
    result = train_py("--multirun", "hparams_search=lr_gamma_dropout", storage, f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: hydra.sweeper.storage reads the environment variable CNNSWEEP_UNSET_FOR_TEST, which is not set: "
        "export it"
    )
    assert not sweep_dir.exists()
