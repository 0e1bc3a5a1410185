"""cnnsweep's Optuna sweeper: hydra-optuna-sweeper's search-space handling with a sturdier loop.

What it adds to the released sweeper (whose config, search-space parsing and trial configuration
it reuses):
- every job learns its trial (`hydra.sweeper.trial`) and reports to it each epoch, so the
  pruner can stop it: such trials are PRUNED, not FAIL;
- a model over `budget.max_params` is PRUNED before any data is read, with its parameter count;
- a job that raises (or diverges) is a FAIL with its error; the sweep goes on until more than
  `max_failure_rate * n_trials` trials of this sweep failed;
- the study lives in storage (SQLite by default) and `n_trials` is the study's total: rerunning
  the command continues it, trials left RUNNING by a dead worker are failed and re-queued, and
  several workers may share one study;
- trials.csv and optimization_results.yaml describe every trial, after every batch.
"""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import OmegaConf
from optuna.trial import TrialState

from cnnsweep.artifacts import SUMMARY_FILE, read_json
from cnnsweep.model import OverBudget
from cnnsweep.results import OVERRIDES, TRIALS_FILE, facts_from_summary, study_rows, write_results
from cnnsweep.signals import Interrupted, stop_requests
from cnnsweep.study import (
    REASON,
    REQUEUED,
    claim,
    enqueue,
    heartbeats,
    n_counted,
    open_storage,
    requeue_lost_trials,
)

log = logging.getLogger(__name__)


class SweepAborted(RuntimeError):
    """Too many trials of this sweep failed."""


class StudySweeper(OptunaSweeperImpl):
    """The sweep loop; constructed by hydra_plugins.cnnsweep_sweeper from `hydra.sweeper`."""

    def __init__(
        self,
        *,
        pruner: Any,
        heartbeat_interval: int,
        grace_period: int | None,
        **optuna_sweeper_args: Any,
    ) -> None:
        super().__init__(**optuna_sweeper_args)
        self.pruner = pruner
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period

    def sweep(self, arguments: list[str]) -> None:
        self.distributions, self.fixed_params = self._search_space(arguments)
        self.sweep_dir = Path(self.config.hydra.sweep.dir)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")
        self.rdb = open_storage(self.storage, self.heartbeat_interval, self.grace_period)
        study = optuna.create_study(
            study_name=self.study_name,
            storage=self.rdb,
            sampler=self.sampler,
            pruner=self.pruner,
            directions=self._get_directions(),
            load_if_exists=True,
        )
        self.study_id = study._study_id
        log.info(f"study {study.study_name!r} in {self.storage}: {len(study.trials)} trials so far")

        self.lock = threading.Lock()  # asking, telling and writing results happen one lane at a time
        self.failures, self.stop, self.errors = 0, False, []
        # Hydra's basic launcher runs jobs in this process, one at a time; other launchers (joblib,
        # submitit) run each lane's trial elsewhere, so a new trial starts as soon as any one ends.
        lanes = 1 if isinstance(self.launcher, BasicLauncher) else self.n_jobs
        with stop_requests() as self.stop_signal:  # Ctrl-C / SIGTERM: finish the trials in flight, start no more
            if lanes == 1:
                self._lane()  # in the main thread, where an in-process job can catch signals itself
            else:
                threads = [threading.Thread(target=self._lane, name=f"cnnsweep-lane-{i}") for i in range(lanes)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
        self._write_results()
        if self.errors:
            raise self.errors[0]
        self.stop_signal.check()

    def _lane(self) -> None:
        """Run trials one after another until the study is full, the sweep aborts, or an error stops it."""
        try:
            while (trial_overrides := self._next_trial()) is not None:
                trial, overrides = trial_overrides
                with heartbeats(self.rdb, [trial._trial_id]):
                    [job] = self.launcher.launch([overrides], initial_job_idx=trial.number)
                with self.lock:
                    self._finish(self._load(), trial.number, job)
                    self._write_results()
                    if self.failures > self.max_failure_rate * self.n_trials and not self.stop:
                        self.stop = True
                        self.errors.append(
                            SweepAborted(
                                f"{self.failures} trials failed, more than max_failure_rate={self.max_failure_rate} "
                                f"of n_trials={self.n_trials}; see {self.sweep_dir / TRIALS_FILE}"
                            )
                        )
        except BaseException as error:
            with self.lock:
                self.stop = True
                self.errors.append(error)

    def _next_trial(self) -> tuple[optuna.Trial, tuple[str, ...]] | None:
        """Ask for and claim the next trial with its job overrides; None when there is nothing left to run."""
        with self.lock:
            if self.stop or self.stop_signal.signal_number is not None:
                return None
            study = self._load()  # a fresh view: optuna's cache never re-reads its own trials
            lost = requeue_lost_trials(study, self.rdb)
            if lost:
                log.warning(f"trials {lost} were left RUNNING by a worker that stopped: failed, parameters re-queued")
            trials = self.rdb.get_all_trials(self.study_id, deepcopy=False)
            queued = any(t.state == TrialState.WAITING for t in trials)  # re-queued trials: ask() runs them first
            if not queued and n_counted(trials) >= self.n_trials:
                return None
            trial = study.ask()
            if not claim(study, self.rdb, trial, self.n_trials):
                return None  # the remaining places are taken by other workers
            reseed(self.sampler, self.seed, trial.number)
            [overrides] = self._configure_trials([trial], self.distributions, self.fixed_params)
            trial.set_user_attr("run_dir", str(self.sweep_dir / str(trial.number)))  # known before it starts
            per_job = (f"hydra.sweeper.trial={trial.number}", f"hydra.sweep.subdir={trial.number}")
            return trial, (*overrides, *per_job)

    @property
    def seed(self) -> int | None:
        """The sampler's configured seed (hydra.sweeper.sampler.seed), if any."""
        return self.config.hydra.sweeper.sampler.get("seed")

    def _search_space(self, arguments: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Distributions and fixed values from hydra.sweeper.params and the command line (as upstream)."""
        self._process_searchspace_config()
        distributions, fixed_params = create_params_from_overrides([*self._parse_sweeper_params_config(), *arguments])
        if self.search_space_distributions:
            distributions = {**self.search_space_distributions, **distributions}
        if isinstance(self.sampler, functools.partial) and self.sampler.func is optuna.samplers.GridSampler:
            grid = {name: self._to_grid_sampler_choices(d) for name, d in distributions.items()}
            self.sampler = self.sampler(grid)
            n_points = 1
            for choices in grid.values():
                n_points *= len(choices)
            self.n_trials = min(self.n_trials, n_points)
        for name in fixed_params:
            distributions.pop(name, None)
        return distributions, fixed_params

    def _load(self) -> optuna.Study:
        return optuna.load_study(study_name=self.study_name, storage=self.rdb, sampler=self.sampler, pruner=self.pruner)

    def _finish(self, study: optuna.Study, number: int, job: JobReturn) -> None:
        """Record the job's outcome on its trial (and count it if it failed)."""
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        attrs = self._job_facts(job)
        value, state = None, TrialState.COMPLETE
        interrupted = None
        if job.status == JobStatus.COMPLETED:
            value = float(job.return_value)
        else:
            error = job._return_value  # the exception the job raised (JobReturn keeps it here)
            pruned = isinstance(error, (optuna.TrialPruned, OverBudget))
            state = TrialState.PRUNED if pruned else TrialState.FAIL
            attrs[REASON] = str(error) if pruned else f"{type(error).__name__}: {error}"
            if isinstance(error, OverBudget):
                attrs["n_params"] = error.n_params
            if isinstance(error, Interrupted):  # not the trial's fault: run its parameters again later
                attrs[REQUEUED], interrupted = True, error
                self.stop = True
            log.warning(f"trial {number} {state.name}: {attrs[REASON]}")
        for key, item in attrs.items():
            study._storage.set_trial_user_attr(trial_id, key, item)
        try:
            study.tell(number, value, state=state)
        except RuntimeError as error:
            # GridSampler calls study.stop() once the grid is covered, which only works inside
            # study.optimize; the trial's state and value are stored before that.
            if "Study.stop" not in str(error):
                raise
        if interrupted is not None:
            enqueue(study, study.trials[number].params)
            self.errors.append(interrupted)
        elif state == TrialState.FAIL:
            self.failures += 1

    @staticmethod
    def _job_facts(job: JobReturn) -> dict[str, Any]:
        facts: dict[str, Any] = {}
        if job.hydra_cfg is not None:
            run_dir = Path(job.hydra_cfg.hydra.runtime.output_dir)
            facts[OVERRIDES] = [o for o in job.hydra_cfg.hydra.overrides.task]
            summary_file = run_dir / SUMMARY_FILE
            if summary_file.is_file():
                facts |= facts_from_summary(read_json(summary_file), run_dir)
            else:
                facts["run_dir"] = str(run_dir)
        return {key: item for key, item in facts.items() if item is not None}

    def _write_results(self) -> None:
        rows, overrides = study_rows(self.rdb.get_all_trials(self.study_id))
        header = {"name": "optuna", "study_name": self.study_name, "storage": self.storage}
        best = write_results(self.sweep_dir, rows, overrides, self._get_directions()[0], header)
        if best is not None:
            log.info(f"best so far: trial {best['number']}, value {best['value']}")


def reseed(sampler: optuna.samplers.BaseSampler, seed: int | None, number: int) -> None:
    """Seed the sampler's random draws for trial `number` with seed + number.

    A seeded sampler otherwise restarts its random sequence in every process: a resumed sweep
    would repeat its first trials, and two workers started together would draw the same ones.
    Seeding per trial number keeps a seeded sweep reproducible and its trials distinct.
    """
    if seed is None:
        return
    if hasattr(sampler, "_rng"):
        sampler._rng = np.random.RandomState(seed + number)
    for name in ("_random_sampler", "_independent_sampler"):
        inner = getattr(sampler, name, None)
        if isinstance(inner, optuna.samplers.BaseSampler):
            reseed(inner, seed, number)
