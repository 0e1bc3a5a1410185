"""Sweep workers sharing one study in a real PostgreSQL server, as on several machines."""

from __future__ import annotations

import datetime
import functools
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from cnnsweep.sweep.attrs import OWNER, REASON, REQUEUED, RETRIED_FROM, SURPLUS
from cnnsweep.sweep.study import Lanes, open_storage, requeue_lost_trials

from helpers import IN_PROCESS, read_trials, sweep_overrides, train_py

pytestmark = pytest.mark.slow  # PostgreSQL servers and sweep workers in processes

HEARTBEAT_S = 1  # hydra.sweeper.heartbeat_interval of the heartbeat and chaos tests
GRACE_S = 3  # hydra.sweeper.grace_period: a trial is stale once (db now - heartbeat).seconds > GRACE_S
SHORT_HEARTBEATS = (f"hydra.sweeper.heartbeat_interval={HEARTBEAT_S}", f"hydra.sweeper.grace_period={GRACE_S}")


@pytest.fixture
def reaped() -> Iterator[Callable[[subprocess.Popen], subprocess.Popen]]:
    """Registers worker processes; those still running when the test ends (say, it failed) are killed."""
    processes: list[subprocess.Popen] = []

    def register(process: subprocess.Popen) -> subprocess.Popen:
        processes.append(process)
        return process

    yield register
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def worker(
    tiny_mnist: Path,
    sweep_dir: Path,
    url: str,
    study: str,
    n_trials: int,
    epochs: int,
    *overrides: str,
    log: Path | None = None,
) -> subprocess.Popen:
    """A sweep process on the shared study; its output goes to a pipe, or to `log` (for workers nobody reads)."""
    args = sweep_overrides(
        tiny_mnist, sweep_dir, f"trainer.epochs={epochs}", "hparams_search=lr_gamma_dropout",
        f"hydra.sweeper.study_name={study}", f"hydra.sweeper.storage={url}", f"hydra.sweeper.n_trials={n_trials}",
        "hydra/sweeper/pruner=nop", *IN_PROCESS, *overrides,
    )  # fmt: skip
    output = log.open("wb") if log else subprocess.PIPE
    try:
        return train_py(*args, wait=False, stdout=output, text=False)
    finally:
        if log:
            output.close()  # the child holds its own copy


def test_a_killed_worker_loses_nothing_the_other_retries_its_trial(tiny_mnist, tmp_path, postgres_url):
    victim = worker(tiny_mnist, tmp_path / "victim", postgres_url, "kill", 6, 3)
    storage = optuna.storages.RDBStorage(postgres_url)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until the victim is inside a trial
        studies = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        running = (
            optuna.load_study(study_name="kill", storage=storage).get_trials(states=(optuna.trial.TrialState.RUNNING,))
            if "kill" in studies
            else []
        )
        if running:
            break
        time.sleep(0.1)
    assert running, "the victim never started a trial"
    survivor = worker(tiny_mnist, tmp_path / "survivor", postgres_url, "kill", 6, 3)
    time.sleep(1.0)
    victim.send_signal(signal.SIGKILL)  # halfway: its trial is left RUNNING
    victim.wait()
    output = survivor.communicate(timeout=600)[0].decode()
    assert survivor.returncode == 0, output

    trials = optuna.load_study(study_name="kill", storage=postgres_url).trials
    lost = [t for t in trials if t.state.name == "FAIL"]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert lost and all(t.user_attrs[REASON].startswith("interrupted: worker") for t in lost)
    assert len(complete) == 6, [(t.number, t.state.name, t.user_attrs.get(REASON)) for t in trials]
    assert not [t for t in trials if t.state.name == "RUNNING"]
    for t in lost:  # each lost trial's parameters ran again, to the end
        assert any(c.params == t.params for c in complete)


def study_trials(storage: RDBStorage, study: str) -> list[FrozenTrial]:
    """The study's trials as the database holds them now ([] before a worker has created the study)."""
    try:
        return storage.get_all_trials(storage.get_study_id_from_name(study))
    except KeyError:
        return []


def wait_for(found: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll `found` until it returns something true, and return that."""
    deadline = time.monotonic() + timeout_s
    while not (result := found()):
        assert time.monotonic() < deadline, f"waited {timeout_s} s for {what}"
        time.sleep(0.1)
    return result


def heartbeat_age_s(storage: RDBStorage, trial_id: int) -> float | None:
    """Seconds since the trial's last heartbeat by the database server's clock, which optuna's stale
    check uses; None before its first heartbeat."""
    query = sqlalchemy.text("SELECT LOCALTIMESTAMP - heartbeat FROM trial_heartbeats WHERE trial_id = :trial_id")
    with storage.engine.connect() as connection:
        age = connection.execute(query, {"trial_id": trial_id}).scalar()
    return None if age is None else age.total_seconds()


def owner_of(process: subprocess.Popen) -> str:
    """The `cnnsweep:owner` mark of the trials a worker process runs."""
    return f"{socket.gethostname()}:{process.pid}"


def at_work(storage: RDBStorage, study: str, process: subprocess.Popen) -> bool:
    """Whether a worker process has claimed a trial of the study (or has already stopped)."""
    owners = {t.system_attrs.get(OWNER) for t in study_trials(storage, study)}
    return process.poll() is not None or owner_of(process) in owners


def counted(trial: FrozenTrial) -> bool:
    """Uses up one of the study's n_trials: neither a failure whose parameters were re-queued nor unrun surplus."""
    return not (trial.user_attrs.get(REQUEUED) or trial.user_attrs.get(SURPLUS))


def completed_retry(trial: FrozenTrial, trials: list[FrozenTrial]) -> FrozenTrial | None:
    """A later trial of `trial`'s retry chain that ran its parameters to COMPLETE. A worker killed while it
    drew the parameters leaves some undrawn: the retry draws them afresh."""
    chain = trial.system_attrs.get(RETRIED_FROM, trial.number)
    retries = [t for t in trials if t.number > trial.number and t.system_attrs.get(RETRIED_FROM) == chain]
    drawn = trial.params.items()
    return next((t for t in retries if t.state == TrialState.COMPLETE and drawn <= t.params.items()), None)


def describe(trials: list[FrozenTrial]) -> list[tuple]:
    return [(t.number, t.state.name, t.system_attrs.get(RETRIED_FROM), t.user_attrs.get(REASON)) for t in trials]


def test_a_worker_lost_on_another_host_is_failed_by_its_stale_heartbeat_and_rerun(
    tiny_mnist, tmp_path, postgres_url, reaped
):
    n_trials, elsewhere = 4, "elsewhere.example:12345"
    storage = RDBStorage(postgres_url)
    victim = reaped(worker(tiny_mnist, tmp_path / "victim", postgres_url, "stale", n_trials, 3, *SHORT_HEARTBEATS))

    def training_trial() -> list[FrozenTrial]:  # its job has reported an epoch: all its parameters are drawn
        running = [t for t in study_trials(storage, "stale") if t.state == TrialState.RUNNING]
        return [
            t
            for t in running
            if OWNER in t.system_attrs and t.intermediate_values and heartbeat_age_s(storage, t._trial_id) is not None
        ]

    [lost] = wait_for(training_trial, 120, "the victim's trial to train with a heartbeat")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    # The trial now belongs to a worker on another host: the process check cannot see that it is gone.
    storage.set_trial_system_attr(lost._trial_id, OWNER, elsewhere)
    beat_age_s = heartbeat_age_s(storage, lost._trial_id)
    last_beat = datetime.datetime.now() - datetime.timedelta(seconds=beat_age_s)  # on this host's clock
    assert beat_age_s < GRACE_S, "the victim stopped beating before it was killed"
    checker = open_storage(postgres_url, HEARTBEAT_S, GRACE_S)
    within_grace = requeue_lost_trials(
        optuna.load_study(study_name="stale", storage=checker), Lanes(checker, HEARTBEAT_S, GRACE_S)
    )
    assert within_grace == [] and storage.get_trial(lost._trial_id).state == TrialState.RUNNING, "failed too early"

    survivor = reaped(worker(tiny_mnist, tmp_path / "survivor", postgres_url, "stale", n_trials, 3, *SHORT_HEARTBEATS))
    output = survivor.communicate(timeout=300)[0].decode()
    assert survivor.returncode == 0, output

    trials = study_trials(storage, "stale")
    failed = next(t for t in trials if t.number == lost.number)
    assert failed.state == TrialState.FAIL and failed.user_attrs.get(REQUEUED) is True, describe(trials)
    assert failed.user_attrs[REASON].startswith(f"interrupted: worker {elsewhere}")
    silent_s = (failed.datetime_complete - last_beat).total_seconds()
    assert silent_s > GRACE_S, f"failed {silent_s:.1f} s after its last heartbeat, within the {GRACE_S} s grace"
    retry = completed_retry(failed, trials)
    assert retry is not None and retry.system_attrs[RETRIED_FROM] == failed.number, describe(trials)
    assert retry.params == failed.params and len(failed.params) >= 3
    assert retry.system_attrs[OWNER] != elsewhere
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], describe(trials)
    counted_trials = [t for t in trials if counted(t)]
    assert len(counted_trials) == n_trials and all(t.state == TrialState.COMPLETE for t in counted_trials)
    assert sorted(t.number for t in trials) == list(range(len(trials))), describe(trials)
    rows = {int(row["number"]): row for row in read_trials(tmp_path / "survivor")}
    assert rows[failed.number]["state"] == "FAIL" and elsewhere in rows[failed.number]["reason"]
    assert rows[retry.number]["state"] == "COMPLETE"


def test_a_heartbeat_recorded_during_another_workers_check_does_not_fail_the_live_trial(postgres_url):
    # optuna 2.10's stale check read the database's clock, then the heartbeats: a heartbeat committed
    # in between is newer than that clock, and (now - heartbeat).seconds of the negative gap was 86399.
    # Optuna 5 fixed it, and study.py now relies on its check alone: this guards that fix.
    beating = open_storage(postgres_url, HEARTBEAT_S, GRACE_S)
    study = optuna.create_study(study_name="beat-race", storage=beating)
    trial = study.ask()
    beating.set_trial_system_attr(trial._trial_id, OWNER, "elsewhere.example:12345")  # alive, elsewhere
    beating.record_heartbeat(trial._trial_id)
    checker = open_storage(postgres_url, HEARTBEAT_S, GRACE_S)
    beat_pending = [trial._trial_id]

    def beat_after_clock(connection, cursor, statement: str, *rest: Any) -> None:
        if beat_pending and statement.lower().startswith("select now()"):
            beating.record_heartbeat(beat_pending.pop())  # the live worker's heartbeat thread, just then

    sqlalchemy.event.listen(checker.engine, "after_cursor_execute", beat_after_clock)
    lost = requeue_lost_trials(
        optuna.load_study(study_name="beat-race", storage=checker), Lanes(checker, HEARTBEAT_S, GRACE_S)
    )
    assert not beat_pending, "the check never read the database's clock: the race was not staged"
    assert lost == [] and beating.get_trial(trial._trial_id).state == TrialState.RUNNING


def test_workers_killed_at_random_and_restarted_lose_and_repeat_no_trial(tiny_mnist, tmp_path, postgres_url, reaped):
    n_trials, chaos_s, finish_s = 10, 75, 90
    rng = random.Random(0)
    storage = RDBStorage(postgres_url)
    logs: list[Path] = []

    def start() -> subprocess.Popen:
        name = f"worker{len(logs)}"
        logs.append(tmp_path / f"{name}.log")
        return reaped(
            worker(tiny_mnist, tmp_path / name, postgres_url, "chaos", n_trials, 2, *SHORT_HEARTBEATS, log=logs[-1])
        )

    def tails() -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-1500:]}" for log in logs)

    began = time.monotonic()
    workers = [start(), start()]
    kills, killed_trials = 0, []  # killed_trials: the numbers of the trials a kill left unfinished
    while time.monotonic() < began + chaos_s and any(w.poll() is None for w in workers):
        slot = rng.randrange(len(workers))
        victim = workers[slot]
        owner = owner_of(victim)
        # Strike 1-4 s after the victim's first claim: a kill while Python imports torch tests nothing.
        wait_for(functools.partial(at_work, storage, "chaos", victim), 120, f"worker {owner} to claim a trial")
        time.sleep(rng.uniform(1, 4))
        if victim.poll() is not None:  # it stopped by itself: the study is full (or it crashed: checked below)
            continue
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        kills += 1
        killed_trials += [
            t.number
            for t in study_trials(storage, "chaos")
            if t.system_attrs.get(OWNER) == owner and (t.state == TrialState.RUNNING or t.user_attrs.get(REQUEUED))
        ]
        workers[slot] = start()
    for w in workers:
        try:
            w.wait(timeout=max(1.0, began + chaos_s + finish_s - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"the last workers did not finish the study within {finish_s} s\n{tails()}")
    assert [w.returncode for w in workers] == [0, 0], tails()

    trials = study_trials(storage, "chaos")
    requeued = [t for t in trials if t.user_attrs.get(REQUEUED)]
    surplus = [t for t in trials if t.user_attrs.get(SURPLUS)]
    print(
        f"\nchaos: {kills} kills ({len(killed_trials)} mid-trial: {killed_trials}), {len(logs) - 2} restarts, "
        f"{len(trials)} trials, {len(requeued)} requeued, {len(surplus)} surplus, {time.monotonic() - began:.0f} s"
    )
    assert sorted(t.number for t in trials) == list(range(len(trials))), describe(trials)
    counted_trials = [t for t in trials if counted(t)]
    assert len(counted_trials) == n_trials, describe(trials)
    assert all(t.state == TrialState.COMPLETE for t in counted_trials), describe(trials)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], describe(trials)
    assert all(t.state == TrialState.FAIL for t in requeued + surplus), describe(trials)
    assert set(killed_trials) <= {t.number for t in requeued}, describe(trials)
    not_rerun = [t.number for t in requeued if completed_retry(t, trials) is None]
    assert not not_rerun, f"trials {not_rerun} were re-queued but never ran again: {describe(trials)}"
