"""Bookkeeping of an Optuna study shared by sweep workers: storage, trial ownership, lost trials.

Several sweep processes (on one machine or many) may work on one study, in a database (RDBStorage) or
a journal file (JournalStorage, `journal:///abs/path/study.log`). Each marks the trials it runs with
its owner (host:pid) and keeps a heartbeat for them: Optuna's own in a database (by the database's
clock), a timestamp in the trial's system attrs in a journal, which has no heartbeat of Optuna's (by
the workers' clocks: keep them in step, as NTP does). A trial left RUNNING by a worker that died (its
process on this host is gone, its heartbeat is stale, or it never got an owner) is marked FAIL and its
parameters are queued again through Optuna's RetryHeartbeatStaleTrialCallback (the retry's system attr
`failed_trial` names the first trial of its chain), so the study's total of trials is still reached. A
database server that is briefly unreachable is waited for (cnnsweep.sweep.storage).

Why not Optuna's own `fail_stale_trials(study)`: it fails a trial first and lets the callback mark and
re-queue it after, and Optuna refuses to mark a finished trial: a worker that died between the two would
leave a failed trial that is never run again nor told apart. `requeue_lost_trials` marks it, then fails
it, then re-queues it, and a later worker finishes the re-queue of a marked one.
"""

from __future__ import annotations

import copy
import datetime
import logging
import os
import re
import socket
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from cnnsweep.errors import UserError
from cnnsweep.sweep.attrs import (
    BEAT,
    CURVE,
    OVER_BUDGET,
    OWNER,
    PRUNED_BY,
    REASON,
    REPEAT,
    REQUEUED,
    RETRIED_FROM,
    SURPLUS,
)
from cnnsweep.sweep.storage import (
    DATABASE_ERRORS,
    JOURNAL,
    PATIENCE_S,
    driver_message,
    engine_options,
    is_network,
    patiently,
    shown_url,
    wait_out_outages,
)

log = logging.getLogger(__name__)

# Optuna marks as experimental what sweeps use knowingly (heartbeats, metric names, retries), and warns that
# heartbeats are "supposed to be used with Study.optimize": our loop keeps them itself (heartbeats() below).
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

SQLITE_TIMEOUT_S = 60  # how long a worker waits for another's write lock on a SQLite study
STORAGE_ATTEMPTS = 5  # tries to open a storage that other workers may be creating at the same moment
UPGRADE = "optuna storage upgrade"  # the command Optuna names for a database of an older schema


def open_storage(
    url: str, heartbeat_interval: int | None = None, grace_period: int | None = None, patience_s: float = PATIENCE_S
) -> BaseStorage:
    """The storage for `url`: a journal file (journal:///abs/path) or a database (SQLite, PostgreSQL,
    MySQL), creating a SQLite or journal file's folder.

    A database server that is unreachable (now or later, while the storage is in use) is waited for
    up to `patience_s` seconds (cnnsweep.sweep.storage); then StorageUnavailable, in one line. A database of
    an older Optuna's schema (optuna 2.10's optuna.db) is refused in one line naming the upgrade.
    """
    if url.startswith(JOURNAL):
        return open_journal(url)
    engine_kwargs: dict[str, Any] = engine_options(url) if is_network(url) else {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}

    def connect() -> RDBStorage:
        try:
            return RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval, grace_period=grace_period
            )
        except RuntimeError as error:
            if UPGRADE not in str(error):
                raise
            written_by = re.search(r"set up by (optuna [^)]+)\)", str(error))
            raise UserError(
                f"study storage {shown_url(url)} was written by {written_by[1] if written_by else 'an older Optuna'}: "
                f"run `{UPGRADE} --storage {shown_url(url)}` once to use it with optuna {optuna.__version__} (one "
                "way: the older Optuna cannot read it afterwards; copy the file first to keep both)"
            ) from None

    for attempt in range(STORAGE_ATTEMPTS):
        try:
            if not is_network(url):
                return connect()
            storage = patiently(connect, url, (sqlalchemy.exc.OperationalError,), patience_s)
            wait_out_outages(storage.engine, url, patience_s)
            return storage
        except sqlalchemy.exc.SQLAlchemyError:
            # Workers started together on a new database race to create its tables and stamp its
            # schema version; the loser finds them made on the next attempt.
            if attempt + 1 == STORAGE_ATTEMPTS:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def open_journal(url: str) -> JournalStorage:
    """Optuna's JournalStorage on the file of `journal:///abs/path/study.log` (created with its folder)."""
    path = Path(url.removeprefix(JOURNAL))
    if not url.startswith(f"{JOURNAL}/") or not path.is_absolute():
        raise UserError(
            f"hydra.sweeper.storage={url} names no absolute file: write journal:///abs/path/study.log "
            "(three slashes, then the path from /)"
        )
    if path.is_dir():
        raise UserError(f"hydra.sweeper.storage={url} is a folder; name a file in it, e.g. {url.rstrip('/')}/study.log")
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


@dataclass
class Lanes:
    """A study's storage with the heartbeat settings of the workers that share it."""

    storage: BaseStorage
    heartbeat_interval: int | None = None  # seconds; None: no heartbeats
    grace_period: int | None = None  # seconds without one before a trial counts as lost; None: 2 intervals

    @property
    def grace_s(self) -> float:
        return self.grace_period if self.grace_period is not None else 2 * (self.heartbeat_interval or 60)

    @property
    def beating(self) -> bool:
        return bool(self.heartbeat_interval)

    def record_heartbeat(self, trial_id: int) -> None:
        if isinstance(self.storage, RDBStorage):
            self.storage.record_heartbeat(trial_id)
        else:
            self.storage.set_trial_system_attr(trial_id, BEAT, time.time())

    def stale_trial_ids(self, study_id: int) -> set[int]:
        """The RUNNING trials whose last heartbeat is older than the grace period."""
        if not self.beating:
            return set()
        if isinstance(self.storage, RDBStorage):
            # Private Optuna method (BaseHeartbeat's own, underscored: fail_stale_trials fails what it finds
            # before any mark can be set, see the module's note). Optuna 5 compares with the database's clock
            # correctly (2.10 read a heartbeat committed during the check as 24 hours old).
            # tests/test_storage.py::test_the_rdb_storage_still_lists_stale_trials_for_us fails if it changes (and
            # the heartbeat race test in tests/test_distributed.py if the clock fix is undone).
            return set(self.storage._get_stale_trial_ids(study_id))
        now = time.time()
        running = self.storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        lost = [trial.number for trial in running if now - trial.system_attrs.get(BEAT, now) > self.grace_s]
        return {self.storage.get_trial_id_from_study_id_trial_number(study_id, number) for number in lost}


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


def counts_toward_total(trial: FrozenTrial, over_budget_counts: bool = False) -> bool:
    """Trials that use up the study's n_trials: all but re-queued failures, unrun surplus and (unless
    `over_budget_counts`, as in a grid) draws over the parameter budget."""
    attrs = trial.user_attrs
    return not (attrs.get(REQUEUED) or attrs.get(SURPLUS) or (attrs.get(OVER_BUDGET) and not over_budget_counts))


def n_counted(trials: Iterable[FrozenTrial], over_budget_counts: bool = False, before: int | None = None) -> int:
    """How many of the study's `trials` (all of them; those numbered below `before`, if given) use up n_trials.

    A re-queued failure still holds its place until its retry is queued: a worker that counted in the
    moment between the two would otherwise start a fresh trial, and the retry, ranked after it on the
    study's last place, would be set aside as surplus and its parameters never run again.
    """
    trials = list(trials)
    holding = {trial.number for trial in unretried(trials, failed_only=False)}
    return sum(
        counts_toward_total(trial, over_budget_counts) or trial.number in holding
        for trial in trials
        if before is None or trial.number < before
    )


def requeue_lost_trials(study: optuna.Study, lanes: Lanes) -> list[int]:
    """Fail the RUNNING trials whose worker is gone and queue their parameters again.

    A worker is gone when its process on this host no longer exists, when its heartbeat is older
    than the grace period (a worker on another host), or when its trial never got an owner within
    that period (killed between asking for the trial and claiming it). Also re-queues a failed trial
    whose retry was never queued (its worker died in between). Returns the numbers of the trials
    failed here.
    """
    storage = lanes.storage
    study_id = storage.get_study_id_from_name(study.study_name)
    trials = storage.get_all_trials(study_id, deepcopy=False)
    stale = lanes.stale_trial_ids(study_id)
    grace = datetime.timedelta(seconds=lanes.grace_s)
    now = datetime.datetime.now()
    requeued = []
    for trial in trials:
        if trial.state != TrialState.RUNNING:
            continue
        owner = trial.system_attrs.get(OWNER)
        unowned = owner is None and trial.datetime_start is not None and now - trial.datetime_start > grace
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        if _worker_is_gone(owner) or trial_id in stale or unowned:
            if retry_later(study, storage, trial_id, f"interrupted: worker {owner or '(unknown)'} stopped"):
                requeued.append(trial.number)
    for trial in unretried(trials):
        requeue(study, trial)
    return requeued


def retry_later(study: optuna.Study, storage: BaseStorage, trial_id: int, reason: str) -> bool:
    """Fail a RUNNING trial that did not finish through no fault of its own and queue its parameters
    again; False if it had finished meanwhile (by its worker, or failed by another)."""
    frozen = storage.get_trial(trial_id)
    try:
        storage.set_trial_user_attr(trial_id, REASON, reason)
        storage.set_trial_user_attr(trial_id, REQUEUED, True)
        if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:  # finished meanwhile
        return False
    requeue(study, frozen)
    return True


def fresh_copy(trial: FrozenTrial) -> FrozenTrial:
    """The trial without the marks of its failure, for RetryHeartbeatStaleTrialCallback to copy into the retry.

    Nor its owner: a retry that inherited the dead worker's mark would, once a worker has popped it
    with ask() and before that worker's claim, look lost to every other worker and be failed again.
    With repeats, the records (and epoch curves) of the repeats that ended are copied, so the retry runs only
    the others; the curves of repeats that did not end are not (their reruns write new ones).
    """
    copied = copy.deepcopy(trial)
    copied.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in (REQUEUED, REASON, SURPLUS)}
    records = REPEAT.format("")  # the prefix of the repeats' records: repeat_<r>
    ended = {CURVE.format(key.removeprefix(records)) for key in trial.user_attrs if key.startswith(records)}
    copied.system_attrs = {
        k: v
        for k, v in trial.system_attrs.items()
        if k not in (OWNER, BEAT, PRUNED_BY) and (not k.startswith(CURVE.format("")) or k in ended)
    }
    return copied


def unretried(trials: list[FrozenTrial], failed_only: bool = True) -> list[FrozenTrial]:
    """Re-queued failures with no later retry of their chain (their worker died before queueing it, or
    is about to queue it); with `failed_only=False` also those being failed at this moment."""
    retries = [(t.number, t.system_attrs[RETRIED_FROM]) for t in trials if RETRIED_FROM in t.system_attrs]
    return [
        t
        for t in trials
        if (t.state == TrialState.FAIL or not failed_only)
        and t.user_attrs.get(REQUEUED)
        and not any(n > t.number and root == t.system_attrs.get(RETRIED_FROM, t.number) for n, root in retries)
    ]


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a WAITING copy of `trial`'s parameters with Optuna's RetryHeartbeatStaleTrialCallback."""
    RetryHeartbeatStaleTrialCallback()(study, fresh_copy(trial))


def claim(
    study: optuna.Study, lanes: Lanes, trial: optuna.Trial, n_trials: int, over_budget_counts: bool = False
) -> bool:
    """Mark `trial` as this worker's; False (and the trial set aside) if the study is already full.

    Workers racing for the last places may ask for more trials than n_trials; ranking by trial
    number decides, the same way in every worker, which of them run.
    """
    storage = lanes.storage
    study_id = storage.get_study_id_from_name(study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    storage.set_trial_system_attr(trial_id, OWNER, this_worker())
    if lanes.beating:
        lanes.record_heartbeat(trial_id)
    trials = storage.get_all_trials(study_id, deepcopy=False)
    if n_counted(trials, over_budget_counts, before=trial.number) < n_trials:
        return True
    storage.set_trial_user_attr(trial_id, SURPLUS, True)
    storage.set_trial_state_values(trial_id, TrialState.FAIL)
    return False


@contextmanager
def heartbeats(lanes: Lanes, number: int, study_id: int) -> Iterator[None]:
    """Record a heartbeat for trial `number` every heartbeat interval while the block runs."""
    if not lanes.beating:
        yield
        return
    trial_id = lanes.storage.get_trial_id_from_study_id_trial_number(study_id, number)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(lanes.heartbeat_interval):
            try:
                lanes.record_heartbeat(trial_id)
            except DATABASE_ERRORS as error:
                # The trial goes on; the next beat tries again (and the sweep's own next step reports the outage).
                log.warning(f"heartbeat of trial {number} not recorded: {driver_message(error)}")

    thread = threading.Thread(target=beat, name="cnnsweep-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
