"""Bookkeeping of an Optuna study shared by sweep workers: storage, trial ownership, lost trials.

Several sweep processes (on one machine or many) may work on one study. Each marks the trials it
runs with its owner (host:pid) and keeps a heartbeat for them. A trial left RUNNING by a worker
that died (its process on this host is gone, its heartbeat is stale, or it never got an owner) is
marked FAIL and its parameters are queued again through optuna's RetryFailedTrialCallback (the
retry's system attr `failed_trial` names the first trial of its chain), so the study's total of
trials is still reached. A database server that is briefly unreachable is waited for (cnnsweep.storage).

Why not optuna's own `fail_stale_trials(study)`: with several workers it raises as soon as another
worker has failed one of the stale trials first, and the trials it had failed before that never get
their callback, so their parameters would never run again. `requeue_lost_trials` does the same per
trial and tolerates the race.
"""

from __future__ import annotations

import copy
import datetime
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryFailedTrialCallback
from optuna.trial import FrozenTrial, TrialState

from cnnsweep.storage import (
    DATABASE_ERRORS,
    PATIENCE_S,
    engine_options,
    first_line,
    is_network,
    patiently,
    wait_out_outages,
)

log = logging.getLogger(__name__)

OWNER = "cnnsweep:owner"  # system attr: "host:pid" of the sweep process running the trial
REQUEUED = "requeued"  # user attr: this FAILed trial's parameters were queued again
SURPLUS = "surplus"  # user attr: asked beyond n_trials by a racing worker, never run
REASON = "reason"  # user attr: why the trial was pruned or failed
OVER_BUDGET = "over_budget"  # user attr: the drawn model was over budget.max_params, so it never ran
RETRIED_FROM = "failed_trial"  # system attr set by optuna's RetryFailedTrialCallback: the first trial of a chain
SQLITE_TIMEOUT_S = 60  # how long a worker waits for another's write lock on a SQLite study
STORAGE_ATTEMPTS = 5  # tries to open a storage that other workers may be creating at the same moment
# optuna 2.10's table of each RUNNING trial's last heartbeat (by the database's clock)
HEARTBEATS = sqlalchemy.table(
    "trial_heartbeats", sqlalchemy.column("trial_id"), sqlalchemy.column("heartbeat", sqlalchemy.DateTime)
)


def open_storage(
    url: str, heartbeat_interval: int | None = None, grace_period: int | None = None, patience_s: float = PATIENCE_S
) -> RDBStorage:
    """An RDB storage (SQLite, PostgreSQL, MySQL) for `url`, creating a SQLite file's folder.

    A database server that is unreachable (now or later, while the storage is in use) is waited for
    up to `patience_s` seconds (cnnsweep.storage); then StorageUnavailable, in one line.
    """
    engine_kwargs: dict[str, Any] = engine_options(url) if is_network(url) else {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}

    def connect() -> RDBStorage:
        return RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval, grace_period=grace_period
        )

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


def requeue_lost_trials(study: optuna.Study, storage: RDBStorage) -> list[int]:
    """Fail the RUNNING trials whose worker is gone and queue their parameters again.

    A worker is gone when its process on this host no longer exists, when its heartbeat is older
    than the storage's grace period (a worker on another host), or when its trial never got an
    owner within that period (killed between asking for the trial and claiming it). `storage` is
    the study's RDB backend, read directly: optuna's cached view of a study never re-reads the
    trials it created itself. Also re-queues a failed trial whose retry was never queued (its
    worker died in between). Returns the numbers of the trials failed here.
    """
    trials = storage.get_all_trials(study._study_id, deepcopy=False)
    stale = stale_trial_ids(storage, study._study_id)
    grace = datetime.timedelta(seconds=grace_period_s(storage))
    now = datetime.datetime.now()
    requeued = []
    for trial in trials:
        if trial.state != TrialState.RUNNING:
            continue
        owner = trial.system_attrs.get(OWNER)
        unowned = owner is None and trial.datetime_start is not None and now - trial.datetime_start > grace
        if _worker_is_gone(owner) or trial._trial_id in stale or unowned:
            if retry_later(study, storage, trial._trial_id, f"interrupted: worker {owner or '(unknown)'} stopped"):
                requeued.append(trial.number)
    for trial in unretried(trials):
        requeue(study, trial)
    return requeued


def stale_trial_ids(storage: RDBStorage, study_id: int) -> set[int]:
    """The RUNNING trials whose last heartbeat is older than the grace period.

    optuna 2.10's own check alone would fail live trials: it reads the database's clock, then the
    heartbeats, and a heartbeat committed in between is newer than that clock; `(now - heartbeat).seconds`
    of the negative difference is 86399. Its candidates are confirmed against a clock read after
    their heartbeats.
    """
    if not storage.is_heartbeat_enabled():
        return set()
    # optuna 2.10 offers no public way to list stale trials without failing them (see the module's note).
    candidates = storage._get_stale_trial_ids(study_id)
    if not candidates:
        return set()
    with storage.engine.connect() as connection:
        query = sqlalchemy.select(HEARTBEATS.c.trial_id, HEARTBEATS.c.heartbeat).where(
            HEARTBEATS.c.trial_id.in_(candidates)
        )
        last_beats = dict(connection.execute(query).all())
    with storage.engine.connect() as connection:  # a later transaction: its clock is past every beat read above
        now = connection.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar().replace(tzinfo=None)
    grace = grace_period_s(storage)
    return {trial_id for trial_id, beat in last_beats.items() if (now - beat).total_seconds() > grace}


def grace_period_s(storage: RDBStorage) -> float:
    """Seconds without a heartbeat after which a RUNNING trial counts as lost (optuna's default: 2 intervals)."""
    if storage.grace_period is not None:
        return storage.grace_period
    return 2 * (storage.heartbeat_interval or 60)


def retry_later(study: optuna.Study, storage: RDBStorage, trial_id: int, reason: str) -> bool:
    """Fail a RUNNING trial that did not finish through no fault of its own and queue its parameters
    again; False if it had finished meanwhile (by its worker, or failed by another)."""
    frozen = storage.get_trial(trial_id)
    try:
        storage.set_trial_user_attr(trial_id, REASON, reason)
        storage.set_trial_user_attr(trial_id, REQUEUED, True)
        if not storage.set_trial_state(trial_id, TrialState.FAIL):
            return False
    except RuntimeError:  # finished meanwhile
        return False
    requeue(study, frozen)
    return True


def fresh_copy(trial: FrozenTrial) -> FrozenTrial:
    """The trial without the marks of its failure, for RetryFailedTrialCallback to copy into the retry.

    Nor its owner: a retry that inherited the dead worker's mark would, once a worker has popped it
    with ask() and before that worker's claim, look lost to every other worker and be failed again.
    """
    copied = copy.deepcopy(trial)
    copied.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in (REQUEUED, REASON, SURPLUS)}
    copied.system_attrs = {k: v for k, v in trial.system_attrs.items() if k != OWNER}
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
    """Queue a WAITING copy of `trial`'s parameters with optuna's RetryFailedTrialCallback."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryFailedTrialCallback()(study, fresh_copy(trial))


def claim(
    study: optuna.Study, storage: RDBStorage, trial: optuna.Trial, n_trials: int, over_budget_counts: bool = False
) -> bool:
    """Mark `trial` as this worker's; False (and the trial set aside) if the study is already full.

    Workers racing for the last places may ask for more trials than n_trials; ranking by trial
    number decides, the same way in every worker, which of them run.
    """
    owned = study._storage  # the trial is in this study's cache: write through it to keep the cache true
    owned.set_trial_system_attr(trial._trial_id, OWNER, this_worker())
    if storage.is_heartbeat_enabled():
        storage.record_heartbeat(trial._trial_id)
    trials = storage.get_all_trials(study._study_id, deepcopy=False)
    if n_counted(trials, over_budget_counts, before=trial.number) < n_trials:
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
                try:
                    storage.record_heartbeat(trial_id)
                except DATABASE_ERRORS as error:
                    # The trial goes on; the next beat tries again (and the sweep's own next step reports the outage).
                    log.warning(f"heartbeat of trial id {trial_id} not recorded: {first_line(error)}")

    thread = threading.Thread(target=beat, name="cnnsweep-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
