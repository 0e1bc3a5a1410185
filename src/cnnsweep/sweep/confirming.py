"""The confirmation stage: a finished study's best configurations re-trained on fresh seeds, through the
sweep's own launcher and lanes (`hydra.sweeper.confirm.top=N hydra.sweeper.confirm.seeds=M`, run after
the search; `cnnsweep confirm` runs only this stage of a finished sweep).

The runs are a second Optuna study in the same storage, `<study_name>.confirm`: one trial per
(configuration, seed), queued with the configuration's parameters and marked with the search trial it
re-trains (attrs.CONFIRMS) and its seed (attrs.CONFIRM_SEED). Its lanes run them as the search's lanes run
trials: each claimed by this worker and kept alive by heartbeats, one left by a dead worker failed and
queued again, an interrupted one queued again. None is pruned (a NopPruner; the job reports to no trial)
nor held to the parameter budget again (each passed it in the search). Confirmation trial k runs as job k
in `<sweep>/confirm/<search trial>/<seed>/` with `seed=<seed>` added to the search trial's overrides.
Rerunning runs only what is missing: a (configuration, seed) with no COMPLETE trial and none waiting or
running is queued again. confirmation.csv and the `confirmed` entry of optimization_results.yaml are
rewritten after every run (cnnsweep.sweep.confirmation).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from cnnsweep.errors import UserError
from cnnsweep.files import CONFIRM_DIR
from cnnsweep.records import RUN_DIR
from cnnsweep.sweep.attrs import CONFIRM_SEED, CONFIRMS, OVERRIDES, REASON, REQUEUED
from cnnsweep.sweep.claims import WAIT, TrialClaims, pause
from cnnsweep.sweep.confirmation import (
    Candidate,
    SeedRun,
    pick_candidates,
    rank_confirmed,
    winner_entry,
    write_confirmation,
)
from cnnsweep.sweep.endings import FailurePolicy
from cnnsweep.sweep.noise import SEED_KEY, confirmation_seeds
from cnnsweep.sweep.outcomes import job_outcome, tell
from cnnsweep.sweep.results import study_rows, write_confirmed
from cnnsweep.sweep.samplers import configure_trial
from cnnsweep.sweep.states import COMPLETE
from cnnsweep.sweep.study import heartbeats, n_counted, retry_later
from cnnsweep.train.signals import Interrupted

log = logging.getLogger(__name__)

CONFIRM_SUFFIX = ".confirm"  # the confirmation study's name: the search's study name and this


def confirm_study_name(study_name: str) -> str:
    return f"{study_name}{CONFIRM_SUFFIX}"


def run_subdir(number: int, seed: int) -> str:
    """A confirmation run's folder under the sweep's: confirm/<search trial>/<seed>."""
    return f"{CONFIRM_DIR}/{number}/{seed}"


def confirm_settings(
    confirm: Mapping[str, Any] | None, distributions: Mapping[str, BaseDistribution]
) -> tuple[int, int]:
    """(top, seeds) of `hydra.sweeper.confirm`, checked before any trial runs; top 0: no confirmation."""
    top, seeds = int((confirm or {}).get("top", 0) or 0), int((confirm or {}).get("seeds", 0) or 0)
    if top < 0:
        raise UserError(f"hydra.sweeper.confirm.top={top}: give the number of best configurations to confirm (0: none)")
    if top and seeds < 1:
        raise UserError(f"hydra.sweeper.confirm.seeds={seeds}: confirming needs at least 1 fresh seed (e.g. 5)")
    if top and SEED_KEY in distributions:
        raise UserError(
            f"{SEED_KEY} is swept, and a confirmation trains each configuration on fresh seeds of its own: "
            f"take {SEED_KEY} out of the search space, or set hydra.sweeper.confirm.top=0"
        )
    return top, seeds


def check_enough(rows: Sequence[dict[str, Any]], candidates: Sequence[Candidate], top: int, study_name: str) -> None:
    """Refuse in one line a study with fewer COMPLETE trials than configurations to confirm."""
    complete = sum(row["state"] == COMPLETE for row in rows)
    if complete < top:
        raise UserError(
            f"study {study_name!r} has {complete} COMPLETE trials, fewer than the {top} best to confirm: "
            f"confirm fewer (--top / hydra.sweeper.confirm.top={max(complete, 1)}) or run more trials first"
        )
    if not candidates:
        raise UserError(f"study {study_name!r} has no COMPLETE trial to confirm")


class ConfirmationStage:
    """One worker's confirmation of its study; `sweeper` is the StudySweeper whose search it confirms
    (its storage, lanes, launcher, search space and config)."""

    def __init__(self, sweeper: Any, top: int, count: int, launch: Callable[[tuple[str, ...], int], JobReturn]) -> None:
        self.sweeper, self.top, self.launch = sweeper, top, launch
        self.rdb, self.lanes = sweeper.rdb, sweeper.lanes
        self.name = confirm_study_name(sweeper.study_name)
        self.objectives, self.directions = sweeper.objectives, sweeper.directions
        repeats = int(sweeper.config.hydra.sweeper.get("repeats", 1) or 1)  # seeds the search trained on
        self.seeds = confirmation_seeds(int(sweeper.config.get(SEED_KEY, 0)), repeats, count)
        self.policy = FailurePolicy(sweeper.max_failure_rate, top * count)
        self.lock = threading.Lock()
        self.stop_signal: Any = None

    def prepare(self) -> int:
        """Pick the configurations, open the confirmation study and queue each (configuration, seed) that
        has no trial COMPLETE, waiting or running (one left running by a dead worker is queued again by the
        lanes' claims); how many runs are still to finish."""
        rows, _ = study_rows(self.rdb.get_all_trials(self.sweeper.study_id), self.objectives)
        self.candidates = pick_candidates(rows, self.objectives, self.directions, self.top)
        check_enough(rows, self.candidates, self.top, self.sweeper.study_name)
        self.sampler = optuna.samplers.RandomSampler()  # every trial is queued with its parameters: nothing is drawn
        self.pruner = optuna.pruners.NopPruner()
        study = optuna.create_study(
            study_name=self.name, storage=self.rdb, sampler=self.sampler, pruner=self.pruner,
            directions=self.directions, load_if_exists=True,
        )  # fmt: skip
        if study.metric_names != self.objectives:
            study.set_metric_names(self.objectives)
        self.study_id = self.rdb.get_study_id_from_name(self.name)
        # seed by seed, so that a confirmation stopped midway has every configuration on the same seeds (paired)
        wanted = [(c, seed) for seed in self.seeds for c in self.candidates]
        covered = self.pairs(TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)
        for candidate, seed in wanted:
            if (candidate.number, seed) not in covered:
                study.enqueue_trial(candidate.params, user_attrs={CONFIRMS: candidate.number, CONFIRM_SEED: seed})
        self.claims = TrialClaims(
            storage=self.rdb, lanes=self.lanes, study_id=self.study_id, study_name=self.name, sampler=self.sampler,
            pruner=self.pruner, seed=None, n_trials=n_counted(self.rdb.get_all_trials(self.study_id, deepcopy=False)),
            counts_over_budget=False,
        )  # fmt: skip
        done = self.pairs(TrialState.COMPLETE)
        to_go = sum((candidate.number, seed) not in done for candidate, seed in wanted)
        log.info(
            f"confirming trials {[c.number for c in self.candidates]} of study {self.sweeper.study_name!r} on the "
            f"fresh seeds {self.seeds} (study {self.name!r}): {to_go} of {len(wanted)} runs to go"
        )
        return to_go

    def pairs(self, *states: TrialState) -> set[tuple[int, int]]:
        """The (configuration, seed) pairs of the confirmation trials in `states` (a re-queued failure's
        pair is its retry's)."""
        return {
            pair(trial)
            for trial in self.rdb.get_all_trials(self.study_id, deepcopy=False)
            if trial.state in states and CONFIRMS in trial.user_attrs and not trial.user_attrs.get(REQUEUED)
        }

    def stopping(self) -> bool:
        return self.policy.stopped or (self.stop_signal is not None and self.stop_signal.signal_number is not None)

    def lane(self) -> None:
        """Run confirmation trials one after another until none is left, as the search's lanes do."""
        try:
            while (claimed := self.next_trial()) is not None:
                if claimed is WAIT:
                    pause(self.lanes.heartbeat_interval, self.stopping)
                    continue
                trial, overrides = claimed
                with heartbeats(self.lanes, trial.number, self.study_id):
                    job = self.launch(overrides, trial.number)
                with self.lock:
                    self.finish(trial.number, job)
                    self.write_results()
                    self.policy.check_failure_rate()
        except BaseException as error:
            with self.lock:
                self.policy.stop_with(error)

    def next_trial(self) -> tuple[optuna.Trial, tuple[str, ...]] | object | None:
        """The next queued (configuration, seed) claimed for this worker with its job's overrides."""
        with self.lock:
            while not self.stopping():
                asked = self.claims.next_trial()
                if asked is None or asked is WAIT:
                    return asked
                _, trial = asked
                why_not = self.not_to_run(trial)
                if why_not:
                    self.set_aside(trial.number, why_not)
                    continue
                return trial, self.overrides(trial)
            return None

    def overrides(self, trial: optuna.Trial) -> tuple[str, ...]:
        """The search trial's overrides with the fresh seed, and the run's folder (confirm/<trial>/<seed>)."""
        sweeper = self.sweeper
        drawn = configure_trial(trial, sweeper.distributions, sweeper.fixed_params, sweeper.fixed_overrides)
        number, seed = trial.user_attrs[CONFIRMS], trial.user_attrs[CONFIRM_SEED]
        trial.set_user_attr(RUN_DIR, str(sweeper.sweep_dir / run_subdir(number, seed)))
        kept = [override for override in drawn if override.split("=", 1)[0].lstrip("+~") != SEED_KEY]
        return (*kept, f"{SEED_KEY}={seed}", f"hydra.sweep.subdir={run_subdir(number, seed)}")

    def not_to_run(self, trial: optuna.Trial) -> str | None:
        """Why an asked trial is not run: drawn, not queued (a racing worker's), or a (configuration, seed)
        another trial already ran or runs (two workers that queued it at the same moment); else None."""
        if CONFIRMS not in trial.user_attrs:
            return "not a queued confirmation run"
        mine = (int(trial.user_attrs[CONFIRMS]), int(trial.user_attrs[CONFIRM_SEED]))
        for other in self.rdb.get_all_trials(
            self.study_id, deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)
        ):
            if other.number != trial.number and CONFIRMS in other.user_attrs and pair(other) == mine:
                return f"trial {other.number} runs the same configuration and seed"
        return None

    def set_aside(self, number: int, reason: str) -> None:
        """FAIL an asked trial without running it; it still counts, so no other is asked in its place."""
        trial_id = self.rdb.get_trial_id_from_study_id_trial_number(self.study_id, number)
        self.rdb.set_trial_user_attr(trial_id, REASON, f"not run: {reason}")
        self.rdb.set_trial_state_values(trial_id, TrialState.FAIL)

    def finish(self, number: int, job: JobReturn) -> None:
        """Record the job's outcome on its confirmation trial (an interrupted one is queued again)."""
        trial_id = self.rdb.get_trial_id_from_study_id_trial_number(self.study_id, number)
        timeout_min = self.sweeper.config.hydra.launcher.get("timeout_min")
        outcome = job_outcome(job, number, self.objectives, timeout_min)
        for key, item in outcome.attrs.items():
            self.rdb.set_trial_user_attr(trial_id, key, item)
        study = self.claims.load()
        if isinstance(outcome.error, Interrupted):
            retry_later(study, self.rdb, trial_id, outcome.attrs[REASON])
            self.policy.stop_with(outcome.error)
            return
        tell(study, number, outcome.values, outcome.state)
        if outcome.state == TrialState.FAIL:
            self.policy.trial_failed(number, outcome.error, self.rdb.get_trial(trial_id).params)

    def write_results(self) -> dict[str, Any] | None:
        """confirmation.csv and optimization_results.yaml's `confirmed` from the runs finished so far; that
        entry (None before any run finished)."""
        done = self.complete_runs()
        runs = [run for run, _ in done.values()]
        confirmed = rank_confirmed(self.candidates, runs, self.directions[0])
        sweep_dir = Path(self.sweeper.sweep_dir)
        write_confirmation(sweep_dir, confirmed, self.objectives[0])
        if confirmed:
            winner = confirmed[0]
            trial = done[(winner.candidate.number, winner.seeds[0])][1]
            overrides = trial.user_attrs.get(OVERRIDES, [])
            run_dir = trial.user_attrs.get(RUN_DIR)
            entry = winner_entry(winner, confirmed, self.objectives[0], overrides, Path(run_dir) if run_dir else None)
            write_confirmed(sweep_dir, entry)
            log.info(
                f"confirmed best so far: trial {winner.candidate.number}, {self.objectives[0]} "
                f"{winner.value.mean:.4f} over {winner.value.n} fresh seeds (the search had "
                f"{winner.candidate.search_value:.4f})"
            )
            return entry
        return None

    def complete_runs(self) -> dict[tuple[int, int], tuple[SeedRun, FrozenTrial]]:
        """The COMPLETE confirmation runs of this confirmation's configurations and seeds, by (trial, seed)."""
        wanted = {c.number for c in self.candidates}
        done: dict[tuple[int, int], tuple[SeedRun, FrozenTrial]] = {}
        for trial in self.rdb.get_all_trials(self.study_id, states=(TrialState.COMPLETE,)):
            if CONFIRMS not in trial.user_attrs:
                continue
            number, seed = pair(trial)
            if number in wanted and seed in self.seeds and (number, seed) not in done:
                attrs = trial.user_attrs
                run = SeedRun(number, seed, trial.values[0], attrs.get("test_acc"), attrs.get("duration_s"))
                done[(number, seed)] = (run, trial)
        return done


def pair(trial: FrozenTrial) -> tuple[int, int]:
    """The (search trial, seed) a confirmation trial runs."""
    return int(trial.user_attrs[CONFIRMS]), int(trial.user_attrs[CONFIRM_SEED])
