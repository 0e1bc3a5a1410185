"""Bookkeeping of an Optuna study shared by sweep workers: storage, trial ownership, lost trials.

Several sweep processes (on one machine or many) may work on one study. Each marks the trials it
runs with its owner (host:pid) and keeps a heartbeat for them. A trial left RUNNING by a worker
that died (its process is gone, or its heartbeat is stale) is marked FAIL and its parameters are
queued again, so the study's total of trials is still reached.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

OWNER = "cnnsweep:owner"  # system attr: "host:pid" of the sweep process running the trial
REQUEUED = "requeued"  # user attr: this FAILed trial's parameters were queued again
SURPLUS = "surplus"  # user attr: asked beyond n_trials by a racing worker, never run
REASON = "reason"  # user attr: why the trial was pruned or failed
SQLITE_TIMEOUT_S = 60  # how long a worker waits for another's write lock on a SQLite study
STORAGE_ATTEMPTS = 5  # tries to open a storage that other workers may be creating at the same moment


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None) -> RDBStorage:
    """An RDB storage (SQLite, PostgreSQL, MySQL) for `url`, creating a SQLite file's folder."""
    engine_kwargs = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            return RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval, grace_period=grace_period
            )
        except sqlalchemy.exc.SQLAlchemyError:
            # Workers started together on a new database race to create its tables and stamp its
            # schema version; the loser finds them made on the next attempt.
            if attempt + 1 == STORAGE_ATTEMPTS:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def this_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _worker_is_gone(owner: str | None) -> bool:
    """True when `owner` was a process on this host that no longer exists."""
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


def counts_toward_total(trial: FrozenTrial) -> bool:
    """Trials that use up the study's n_trials: all but re-queued failures and unrun surplus."""
    return not (trial.user_attrs.get(REQUEUED) or trial.user_attrs.get(SURPLUS))


def n_counted(trials: Iterable[FrozenTrial]) -> int:
    return sum(counts_toward_total(trial) for trial in trials)


def requeue_lost_trials(study: optuna.Study, storage: RDBStorage) -> list[int]:
    """Fail the RUNNING trials whose worker is gone and queue their parameters again.

    `storage` is the study's RDB backend, read directly: optuna's cached view of a study never
    re-reads the trials it created itself. Returns the numbers of the trials failed here. Safe
    with several workers: a trial another worker has already finished or failed is left alone.
    """
    running = storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,))
    stale = set(storage._get_stale_trial_ids(study._study_id)) if storage.is_heartbeat_enabled() else set()
    requeued = []
    for trial in running:
        owner = trial.system_attrs.get(OWNER)
        if not (_worker_is_gone(owner) or trial._trial_id in stale):
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, REASON, f"interrupted: worker {owner} stopped")
            storage.set_trial_user_attr(trial._trial_id, REQUEUED, True)
            failed_here = storage.set_trial_state(trial._trial_id, TrialState.FAIL)
        except RuntimeError:  # finished meanwhile (by its worker, or failed by another)
            continue
        if failed_here:
            enqueue(study, trial.params)
            requeued.append(trial.number)
    return requeued


def enqueue(study: optuna.Study, params: dict[str, object]) -> None:
    """Queue a trial with these parameters: the next ask() of any worker runs it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.enqueue_trial(params)


def claim(study: optuna.Study, storage: RDBStorage, trial: optuna.Trial, n_trials: int) -> bool:
    """Mark `trial` as this worker's; False (and the trial set aside) if the study is already full.

    Workers racing for the last places may ask for more trials than n_trials; ranking by trial
    number decides, the same way in every worker, which of them run.
    """
    owned = study._storage  # the trial is in this study's cache: write through it to keep the cache true
    owned.set_trial_system_attr(trial._trial_id, OWNER, this_worker())
    if storage.is_heartbeat_enabled():
        storage.record_heartbeat(trial._trial_id)
    earlier = [t for t in storage.get_all_trials(study._study_id, deepcopy=False) if t.number < trial.number]
    if n_counted(earlier) < n_trials:
        return True
    owned.set_trial_user_attr(trial._trial_id, SURPLUS, True)
    owned.set_trial_state(trial._trial_id, TrialState.FAIL)
    return False


@contextmanager
def heartbeats(storage: RDBStorage, trial_ids: list[int]) -> Iterator[None]:
    """Record a heartbeat for each trial every heartbeat interval while the block runs."""
    if not storage.is_heartbeat_enabled():
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(storage.get_heartbeat_interval()):
            for trial_id in trial_ids:
                storage.record_heartbeat(trial_id)

    thread = threading.Thread(target=beat, name="cnnsweep-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
