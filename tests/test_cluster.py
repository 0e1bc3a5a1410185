"""The cluster path on one machine: submitit's local launcher with two lanes, sweep processes sharing a
password-protected PostgreSQL study (the URL read from the environment, as README says), and the
database restarted while a worker needs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from omegaconf import OmegaConf
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from cnnsweep.files import BEST_FILE, METRICS_FILE, MULTIRUN_FILE, STUDY_DB, SUMMARY_FILE
from cnnsweep.sweep.attrs import OVER_BUDGET, OWNER, REASON, REQUEUED, SURPLUS
from cnnsweep.sweep.plugin_facts import TARGET
from cnnsweep.sweep.storage import StorageUnavailable
from cnnsweep.sweep.study import open_storage
from cnnsweep.sweep.trial import connect_trial

from helpers import IN_PROCESS, read_trials, train_py
from postgres import running_server

pytestmark = pytest.mark.slow  # submitit jobs and a PostgreSQL server

PASSWORD = "pw-Zq7-not-for-files"  # distinctive: any file or output line holding it leaked it
STORAGE_VARIABLE = "CNNSWEEP_STORAGE"
FROM_ENVIRONMENT = f"hydra.sweeper.storage=${{oc.env:{STORAGE_VARIABLE}}}"  # README's way: Hydra records only this
SUBMITIT_LANES = ("hydra/launcher=submitit_local", "hydra.sweeper.n_jobs=2", "trainer.threads=1")


@pytest.fixture(scope="module")
def server():
    """A PostgreSQL server that asks for a password on TCP; skipped where none can be started."""
    pytest.importorskip("psycopg", reason="psycopg (the dev extra) talks to PostgreSQL")
    try:
        with running_server(host_auth="scram-sha-256") as running:
            yield running
    except RuntimeError as reason:
        pytest.skip(f"no PostgreSQL server could be started: {reason}")


@pytest.fixture(scope="module")
def secret_url(server) -> str:
    """The URL of a user with a password (in the URL) who owns a database of its own."""
    return server.create_user("cnnsweep", PASSWORD)


@pytest.fixture(scope="module")
def submitit():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[cluster]' adds it")


def sweep_args(root: Path, sweep_dir: Path, *extra: str) -> list[str]:
    return [
        "--multirun", f"data.root={root}", "data.download=false", "data.val_size=100", "trainer.progress=false",
        "trainer.device=cpu", "trainer.compile=auto", f"hydra.sweep.dir={sweep_dir}", *extra,
    ]  # fmt: skip


def start_sweep(args: list[str], storage_url: str | None = None) -> subprocess.Popen:
    """`python train.py ARGS` with its output in a pipe and, if given, the storage URL in its environment."""
    environment = {**os.environ, STORAGE_VARIABLE: storage_url} if storage_url else None
    return train_py(*args, wait=False, env=environment, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen, timeout_s: float = 300) -> tuple[str, str]:
    stdout, stderr = process.communicate(timeout=timeout_s)
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return stdout, stderr


def submitit_jobs(sweep_dir: Path) -> list[Path]:
    """submitit's folders of the jobs it ran (one per job; named by the job's id)."""
    return [path for path in (sweep_dir / ".submitit").iterdir() if path.name.isdigit()]


def test_submitit_local_lanes_record_complete_pruned_over_budget_and_failed_trials(tiny_mnist, tmp_path, submitit):
    sweep_dir = tmp_path / "sweep"
    # A grid of 8: the width-400 half is over budget; of the 4 jobs, lr 1e9 diverges (FAIL), and with the
    # ThresholdPruner at 1.1 every trial that has epochs left after its first is pruned there.
    grid = (
        "hydra/sweeper=cnnsweep", "hydra/sweeper/sampler=grid", "hydra.sweeper.study_name=test", "objective=val_acc",
        "model.widths.6=choice(16,400)", "optimizer.lr=choice(0.02,1e9)", "trainer.epochs=choice(1,3)",
        "hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=1.1", "hydra.sweeper.max_failure_rate=0.5",
    )  # fmt: skip
    finish(start_sweep(sweep_args(tiny_mnist, sweep_dir, *grid, *SUBMITIT_LANES)))

    study = optuna.load_study(study_name="test", storage=f"sqlite:///{sweep_dir / STUDY_DB}")
    by_point = {
        (t.params["model.widths.6"], t.params["optimizer.lr"], t.params["trainer.epochs"]): t for t in study.trials
    }
    assert len(study.trials) == len(by_point) == 8
    states = {point: trial.state for point, trial in by_point.items()}
    assert states == {
        **{(400, lr, epochs): TrialState.PRUNED for lr in (0.02, 1e9) for epochs in (1, 3)},
        (16, 0.02, 1): TrialState.COMPLETE,
        (16, 0.02, 3): TrialState.PRUNED,
        (16, 1e9, 1): TrialState.FAIL,
        (16, 1e9, 3): TrialState.FAIL,
    }
    complete, pruned = by_point[(16, 0.02, 1)], by_point[(16, 0.02, 3)]
    # Each job reported to its own trial (hydra.sweeper.trial reached it through submitit): one epoch each.
    assert complete.intermediate_values == {1: complete.value} and list(pruned.intermediate_values) == [1]
    assert pruned.user_attrs[REASON].startswith("pruned after epoch 1")
    for lr_epochs in ((1e9, 1), (1e9, 3)):  # the job's exception came back through submitit's result file
        assert by_point[(16, *lr_epochs)].user_attrs[REASON].startswith("Diverged: training diverged: loss")
    for over in (t for point, t in by_point.items() if point[0] == 400):  # refused in the sweep, before any job
        assert over.user_attrs[OVER_BUDGET] is True and over.user_attrs["n_params"] > 20_000
        assert not (sweep_dir / str(over.number)).exists()
    assert len(submitit_jobs(sweep_dir)) == 4  # the 4 jobs under budget, and nothing else

    rows = read_trials(sweep_dir)
    assert [(int(row["number"]), row["state"]) for row in rows] == [(t.number, t.state.name) for t in study.trials]
    for row, trial in zip(rows, study.trials, strict=True):
        value = trial.value if trial.state == TrialState.COMPLETE else None  # (optuna keeps a pruned one's last)
        assert (float(row["value"]) if row["value"] else None) == value
        assert (int(row["model.widths.6"]), float(row["optimizer.lr"])) == (
            trial.params["model.widths.6"], trial.params["optimizer.lr"],
        )  # fmt: skip
    assert rows[complete.number]["run_dir"] == str(sweep_dir / str(complete.number))
    assert float(rows[complete.number]["value"]) == complete.value and rows[pruned.number]["epochs_run"] == "1"
    by_state = {state.name: sum(t.state == state for t in study.trials) for state in set(states.values())}
    print(f"\nsubmitit_local, 2 lanes: {len(study.trials)} trials {by_state}, {len(submitit_jobs(sweep_dir))} jobs")


@pytest.fixture(scope="module")
def two_workers(tiny_mnist, tmp_path_factory, secret_url, submitit) -> dict:
    """Two submitit_local sweep processes of two lanes each on one PostgreSQL study of 4 trials, in one
    sweep folder, the URL (with its password) given as README says: through the environment."""
    sweep_dir = tmp_path_factory.mktemp("two_workers") / "sweep"
    args = sweep_args(
        tiny_mnist, sweep_dir, "hparams_search=lr_gamma_dropout", "hydra.sweeper.study_name=shared",
        "hydra.sweeper.n_trials=4", "trainer.epochs=1", "hydra/sweeper/pruner=nop", FROM_ENVIRONMENT, *SUBMITIT_LANES,
    )  # fmt: skip
    workers = [start_sweep(args, secret_url) for _ in range(2)]
    outputs = [finish(worker) for worker in workers]
    storage = RDBStorage(secret_url)
    trials = storage.get_all_trials(storage.get_study_id_from_name("shared"))
    return {"sweep_dir": sweep_dir, "outputs": outputs, "pids": [w.pid for w in workers], "trials": trials}


def test_two_submitit_sweeps_share_one_postgres_study_every_trial_number_once(two_workers):
    trials, sweep_dir = two_workers["trials"], two_workers["sweep_dir"]
    numbers = sorted(t.number for t in trials)
    assert numbers == list(range(len(trials)))
    counted = [t for t in trials if not t.user_attrs.get(SURPLUS)]
    assert len(counted) == 4 and {t.state for t in counted} == {TrialState.COMPLETE}
    for surplus in (t for t in trials if t.user_attrs.get(SURPLUS)):  # asked by a racing worker, never run
        assert surplus.state == TrialState.FAIL and not (sweep_dir / str(surplus.number)).exists()
    owners = {t.system_attrs[OWNER].rpartition(":")[2] for t in counted}
    assert owners == {str(pid) for pid in two_workers["pids"]}, "both workers ran trials"
    assert len({tuple(sorted(t.params.items())) for t in counted}) == 4
    rows = read_trials(sweep_dir)
    assert [(int(row["number"]), row["state"]) for row in rows] == [(t.number, "COMPLETE") for t in counted]
    for trial in counted:
        assert (sweep_dir / str(trial.number) / SUMMARY_FILE).is_file()
    print(f"\ntwo workers: trials {numbers}, {len(counted)} counted, all COMPLETE")


def test_no_file_of_the_sweep_and_no_output_line_holds_the_database_password(two_workers):
    sweep_dir = two_workers["sweep_dir"]
    files = [path for path in sweep_dir.rglob("*") if path.is_file()]
    assert len(files) > 30 and {".hydra", ".submitit"} <= {part for path in files for part in path.parts}
    leaked = [str(path) for path in files if PASSWORD.encode() in path.read_bytes()]
    assert leaked == []
    outputs = [stream for pair in two_workers["outputs"] for stream in pair]
    assert not [line for output in outputs for line in output.splitlines() if PASSWORD in line]
    print(f"\npassword {PASSWORD!r}: searched {len(files)} files under {sweep_dir} and 4 output streams: 0 hits")

    # ... and the places that name the storage show it, masked, or keep Hydra's interpolation text.
    masked = re.compile(r"postgresql://cnnsweep:\*\*\*@127\.0\.0\.1:\d+/cnnsweep")
    assert masked.fullmatch(OmegaConf.load(sweep_dir / BEST_FILE).storage)
    assert all(
        re.search(rf"study 'shared' in {masked.pattern}", stdout + stderr) for stdout, stderr in two_workers["outputs"]
    )
    for saved in [sweep_dir / MULTIRUN_FILE, *sweep_dir.glob("*/.hydra/hydra.yaml")]:
        assert yaml.safe_load(saved.read_text())["hydra"]["sweeper"]["storage"] == FROM_ENVIRONMENT.partition("=")[2]


def test_a_database_restart_between_trials_loses_no_trial(tiny_mnist, tmp_path, server, secret_url):
    # Two objectives: Optuna cannot prune them, so jobs report nothing to their trials and only the
    # worker itself talks to the database, when one trial ends and the next begins: the outage meets it there.
    n_trials, outage_s = 3, 5
    sweep_dir = tmp_path / "sweep"
    args = sweep_args(
        tiny_mnist, sweep_dir, "hparams_search=lr_gamma_dropout", "hydra.sweeper.study_name=restart",
        f"hydra.sweeper.n_trials={n_trials}", "objective=[val_acc,n_params]", "hydra/sweeper/sampler=random",
        "trainer.epochs=3", *IN_PROCESS, FROM_ENVIRONMENT,
    )  # fmt: skip
    worker = start_sweep(args, secret_url)
    first_epoch = sweep_dir / "1" / METRICS_FILE  # trial 1 is training: its last two epochs take about a second
    deadline = time.monotonic() + 120
    while not first_epoch.exists() and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not first_epoch.exists():
        worker.kill()
        pytest.fail(f"trial 1 never trained:\n{''.join(worker.communicate())[-3000:]}")
    server.stop()
    time.sleep(outage_s)
    server.start()
    stdout, stderr = finish(worker)

    waits = [line for line in stderr.splitlines() + stdout.splitlines() if "unreachable (" in line]
    assert waits and all("postgresql://cnnsweep:***@" in line and "retrying in" in line for line in waits)
    [waited] = [float(s) for s in re.findall(r"reachable again after ([\d.]+) s", stdout + stderr)]
    assert 1 <= waited < 60
    storage = RDBStorage(secret_url)
    trials = storage.get_all_trials(storage.get_study_id_from_name("restart"))
    assert sorted(t.number for t in trials) == list(range(n_trials))
    assert all(t.state == TrialState.COMPLETE and not t.user_attrs.get(REQUEUED) for t in trials)
    assert [(row["number"], row["state"]) for row in read_trials(sweep_dir)] == [
        (str(n), "COMPLETE") for n in range(n_trials)
    ]
    numbers = [t.number for t in trials]
    print(f"\nrestart: server down {outage_s} s; worker waited {waited:.1f} s, {len(waits)} retries; trials {numbers}")


def test_a_job_reporting_to_its_trial_waits_out_a_database_restart(server, secret_url):
    study = optuna.create_study(study_name="report", storage=open_storage(secret_url))
    trial = study.ask()
    hydra_cfg = OmegaConf.create(
        {"sweeper": {"_target_": TARGET, "storage": secret_url, "study_name": "report"}, "job": {"num": trial.number}}
    )  # a job of cnnsweep's sweeper: its trial is its job number
    reporter = connect_trial(hydra_cfg)  # as the job does: its own storage, its own pooled connections
    server.stop()
    restart = threading.Timer(1, server.start)
    restart.start()
    began = time.monotonic()
    reporter.report(1, 0.5, last=False)  # the connection it had is gone: waits for the server, then records
    waited = time.monotonic() - began
    restart.join()
    assert 1 <= waited < 60
    assert RDBStorage(secret_url).get_trial(trial._trial_id).intermediate_values == {1: 0.5}


def test_a_worker_gives_up_in_one_line_on_a_database_that_stays_down(server, secret_url):
    storage = open_storage(secret_url, patience_s=2)
    study = optuna.create_study(study_name="down", storage=storage)
    server.stop()
    try:
        with pytest.raises(StorageUnavailable) as raised:  # through SQLAlchemy's pool and optuna, as itself
            storage.get_all_trials(study._study_id)
    finally:
        server.start()
    message = str(raised.value)
    assert re.match(r"database postgresql://cnnsweep:\*\*\*@127\.0\.0\.1:\d+/cnnsweep unreachable for 2 s \(", message)
    assert PASSWORD not in message and "\n" not in message


def test_a_refused_password_fails_at_once_in_one_line_without_the_password(secret_url):
    wrong = secret_url.replace(PASSWORD, "not-the-password")
    began = time.monotonic()
    with pytest.raises(StorageUnavailable) as raised:
        open_storage(wrong)
    assert time.monotonic() - began < 5  # no retries: waiting would not change the answer
    message = str(raised.value)
    assert re.match(
        r"database postgresql://cnnsweep:\*\*\*@127\.0\.0\.1:\d+/cnnsweep refused the connection: ", message
    )
    assert 'password authentication failed for user "cnnsweep"' in message and "not-the-password" not in message


def test_submitit_jobs_get_one_try_before_timing_out(submitit):
    """one_try_per_job sets hydra-submitit-launcher's `params` (the dict of its settings, an attribute without
    underscore but not documented): this fails if the launcher stops keeping its settings there or passing
    max_num_timeout on to submitit's executor."""
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher

    from cnnsweep.sweep.sweeper import one_try_per_job

    launcher = LocalLauncher(submitit_folder="unused", timeout_min=1)
    assert launcher.params["timeout_min"] == 1
    one_try_per_job(launcher)
    assert launcher.params["max_num_timeout"] == 0
    source = Path(sys.modules[LocalLauncher.__module__].__file__).read_text()
    assert 'specific_init_keys = {"max_num_timeout", "python"}' in source  # it hands it to submitit's executor
