"""Asking the study for this worker's next trial: requeues, claims, and waiting for other workers.

Each ask starts from a fresh view of the study. Trials left RUNNING by a worker that stopped are
failed and their parameters re-queued first (study.py); re-queued trials are asked for before new
ones. Once the study holds `n_trials` counted trials, a worker asks for no more: it waits (WAIT) while
other workers' trials still run, so that one of them lost is run again here, and then ends. A trial
asked for is claimed for this worker; one asked beyond n_trials by a racing worker is set aside.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from cnnsweep.errors import UserError, first_line
from cnnsweep.sweep.attrs import OWNER, REASON
from cnnsweep.sweep.endings import SamplerFailed
from cnnsweep.sweep.outcomes import tell
from cnnsweep.sweep.samplers import reseed
from cnnsweep.sweep.study import Lanes, claim, n_counted, requeue_lost_trials, this_worker

log = logging.getLogger(__name__)

WAIT = object()  # TrialClaims.next_trial's answer while a full study's last trials run in other workers
WAIT_POLL_S = 10.0  # how often a waiting worker looks again (at most; the heartbeat interval if shorter)


@dataclass
class TrialClaims:
    """This worker's way to its study's trials (the sweep's lanes share it, under their lock)."""

    storage: BaseStorage
    lanes: Lanes
    study_id: int
    study_name: str
    sampler: Any
    pruner: Any
    seed: int | None  # the sampler's seed: reseeded per study and trial number
    n_trials: int  # the study's total
    counts_over_budget: bool  # over-budget draws use up a trial (a grid's)
    waiting_for: list[int] = field(default_factory=list)  # the other workers' trials last said to be awaited

    def load(self) -> optuna.Study:
        """A fresh view of the study: optuna's cache never re-reads its own trials."""
        return optuna.load_study(
            study_name=self.study_name, storage=self.storage, sampler=self.sampler, pruner=self.pruner
        )

    def next_trial(self) -> tuple[optuna.Study, optuna.Trial] | object | None:
        """A new trial claimed for this worker (with its study); WAIT while the full study's last trials
        run in other workers; None when there is nothing left to run here."""
        study = self.load()
        lost = requeue_lost_trials(study, self.lanes)
        if lost:
            log.warning(f"trials {lost} were left RUNNING by a worker that stopped: failed, parameters re-queued")
        trials = self.storage.get_all_trials(self.study_id, deepcopy=False)
        queued = any(t.state == TrialState.WAITING for t in trials)  # re-queued trials: ask() runs them first
        if not queued and n_counted(trials, self.counts_over_budget) >= self.n_trials:
            return self.wait_for_others(trials)
        # Relative samplers (CMA-ES, NSGA-II, multivariate TPE) draw inside ask(): seed them for the
        # number the new trial will most likely get, and again once it is known.
        reseed(self.sampler, self.seed, self.study_name, len(trials))
        try:
            trial = study.ask()
        except Exception as error:  # the sampler's before_trial: the trial exists, unclaimed
            unclaimed = [
                t.number
                for t in self.storage.get_all_trials(self.study_id, deepcopy=False)
                if t.number >= len(trials) and t.state == TrialState.RUNNING and OWNER not in t.system_attrs
            ]
            raise self.failed_draw(study, max(unclaimed, default=None), error) from error
        if not claim(study, self.lanes, trial, self.n_trials, self.counts_over_budget):
            return None  # the remaining places are taken by other workers
        reseed(self.sampler, self.seed, self.study_name, trial.number)
        return study, trial

    def failed_draw(self, study: optuna.Study, number: int | None, error: BaseException) -> SamplerFailed:
        """Record trial `number`, which the sampler raised while drawing, as FAIL with the reason (a trial left
        RUNNING would wait for a worker that never comes); the error that stops the sweep in one line."""
        said = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {first_line(error)}"
        if number is None:
            return SamplerFailed(f"the sampler failed while drawing a trial: {said}")
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        self.storage.set_trial_user_attr(trial_id, REASON, f"the sampler failed while drawing this trial: {said}")
        tell(study, number, None, TrialState.FAIL)
        return SamplerFailed(f"the sampler failed while drawing trial {number}: {said}")

    def wait_for_others(self, trials: list[FrozenTrial]) -> object | None:
        """WAIT while trials of other workers run (each lost one becomes this worker's to retry), else None."""
        me = this_worker()
        others = [t.number for t in trials if t.state == TrialState.RUNNING and t.system_attrs.get(OWNER) != me]
        if not others:
            return None
        if others != self.waiting_for:
            log.info(f"the study is full; waiting for trials {others} of other workers (one lost is run again here)")
            self.waiting_for = others
        return WAIT


def pause(heartbeat_interval: int | None, stopping: Callable[[], bool]) -> None:
    """Wait a little (WAIT: other workers' trials are running on a full study), waking when `stopping()`."""
    deadline = time.monotonic() + max(0.5, min(WAIT_POLL_S, heartbeat_interval or WAIT_POLL_S))
    while time.monotonic() < deadline and not stopping():
        time.sleep(0.2)
