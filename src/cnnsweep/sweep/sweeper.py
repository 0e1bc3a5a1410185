"""cnnsweep's Optuna sweeper: hydra-optuna-sweeper's search-space handling with a sturdier loop.

What it adds to the released sweeper (whose config and search-space parsing it reuses):
- the study's direction(s) follow `objective` (one name, or several for a Pareto front), and an
  explicit `direction` that contradicts them is refused before any trial;
- every sampler runs with every search space (the grid splits intervals), seeded per study and trial;
- every job learns its trial (trial N runs as job N: `hydra.job.num`) and reports to it each epoch, so
  the pruner can stop it: such trials are PRUNED, not FAIL (multi-objective trials run unpruned:
  Optuna cannot prune them);
- every sampled model is built in the sweep's own process before its job starts, and its distance to
  `budget.max_params` is the trial's Optuna constraint (`n_params - max_params`, feasible at <= 0): a
  model over budget is PRUNED with its positive constraint value, never runs and does not use up one of
  the study's n_trials, and samplers that read constraints (TPE) learn to avoid that region;
- the study names its objectives (`set_metric_names`), so the dashboard and plots show them;
- a job that raises (or diverges) is a FAIL with its error; the sweep goes on until more than
  `max_failure_rate * n_trials` trials of this sweep failed, but stops after the first trial that
  fails on a bad setting every trial shares (missing data, a validation split too large, ...);
- the study lives in storage (SQLite by default, any RDB URL, or a journal file) and `n_trials` is the
  study's total: rerunning the command continues it, trials left RUNNING by a dead worker are failed and
  re-queued, and several workers may share one study;
- trials.csv and optimization_results.yaml are rewritten after every trial: they describe every trial
  and show the storage URL (as the log does) with its password masked;
- a job that ends without a result (killed, lost, past submitit's timeout) FAILs its trial, and
  submitit does not restart a timed-out job from its first epoch;
- a database briefly unreachable is waited for (cnnsweep.sweep.storage), and given up in one line;
- a sweep that stops early (a shared failure, too many failures, Ctrl-C, a bad setting, the database)
  says why in one line, with the path of trials.csv, and exits non-zero.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from cnnsweep.artifacts import read_json
from cnnsweep.cli import check_config, one_line
from cnnsweep.errors import UserError
from cnnsweep.files import MULTIRUN_FILE, SUMMARY_FILE
from cnnsweep.objectives import checked_directions
from cnnsweep.sweep.attrs import BUDGET_CONSTRAINT, OVER_BUDGET, OVERRIDES, OWNER, REASON
from cnnsweep.sweep.results import (
    TRIALS_FILE,
    facts_from_summary,
    study_rows,
    sweep_objectives,
    write_results,
)
from cnnsweep.sweep.samplers import GridSearch, check_objectives, reseed, search_space
from cnnsweep.sweep.storage import DATABASE_ERRORS, StorageUnavailable, error_line, password_of, shown_url
from cnnsweep.sweep.study import (
    Lanes,
    claim,
    heartbeats,
    n_counted,
    open_storage,
    requeue_lost_trials,
    retry_later,
    this_worker,
)
from cnnsweep.train.model import OverBudget, build_model, check_budget, count_parameters
from cnnsweep.train.signals import Interrupted, stop_requests

log = logging.getLogger(__name__)

WAIT = object()  # _next_trial's answer while a full study's last trials run in other workers
WAIT_POLL_S = 10.0  # how often a waiting worker looks again (at most; the heartbeat interval if shorter)

# An almost all over-budget search space: stop once this share of at least this many draws was over budget.
OVER_BUDGET_SHARE = 0.9
OVER_BUDGET_MIN_DRAWS = 40


class SweepStopped(Exception):
    """The sweep ended before its study was full; the message says why in one line."""

    exit_code = 1


class SweepAborted(SweepStopped):
    """Too many trials of this sweep failed."""


class SharedFailure(SweepStopped):
    """A trial failed on a setting every trial shares: the next ones would fail the same way."""

    exit_code = 2


class JobLost(Exception):
    """The trial's job ended without handing back its result (killed, out of memory, its node lost)."""


class StudySweeper:
    """The sweep loop; constructed by hydra_plugins.cnnsweep_sweeper from `hydra.sweeper`."""

    def __init__(
        self,
        *,
        sampler: Any,
        pruner: Any,
        direction: Any,
        storage: str,
        study_name: str,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        params: DictConfig | None,
        heartbeat_interval: int,
        grace_period: int | None,
        custom_search_space: str | None = None,
    ) -> None:
        if custom_search_space:
            raise UserError(
                "hydra.sweeper.custom_search_space is not supported by cnnsweep's sweeper; "
                "put the search space in hydra.sweeper.params"
            )
        self.sampler, self.pruner, self.direction = sampler, pruner, direction
        self.storage, self.study_name = storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.params = params
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.sweep_dir: Path | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        launcher = config.hydra.runtime.choices.get("hydra/launcher", "")
        self.in_process = launcher == "basic"  # Hydra's basic launcher runs each job in this process
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        if launcher.startswith("submitit"):
            one_try_per_job(self.launcher)

    def sweep(self, arguments: list[str]) -> None:
        self.sweep_dir = Path(self.config.hydra.sweep.dir)
        self.objectives = sweep_objectives(self.config)
        self.directions = checked_directions(self.objectives, self.direction)
        self.distributions, self.fixed_params = self._search_space(arguments)
        check_objectives(self.sampler, self.objectives)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        # Unresolved, as Hydra saves each job's .hydra/: a storage URL read with ${oc.env:...} stays that text here.
        OmegaConf.save(self.config, self.sweep_dir / MULTIRUN_FILE)
        warn_of_a_typed_password(self.storage, self.config.hydra.overrides.hydra)
        self.rdb = open_storage(self.storage, self.heartbeat_interval, self.grace_period)
        self.lanes = Lanes(self.rdb, self.heartbeat_interval, self.grace_period)
        study = optuna.create_study(
            study_name=self.study_name,
            storage=self.rdb,
            sampler=self.sampler,
            pruner=self.pruner,
            directions=self.directions,
            load_if_exists=True,
        )
        if [d.name.lower() for d in study.directions] != self.directions:
            raise UserError(
                f"study {self.study_name!r} in {shown_url(self.storage)} was made to "
                f"{[d.name.lower() for d in study.directions]}, not {self.directions} as objective="
                f"{self.objectives} asks; choose a new hydra.sweeper.study_name"
            )
        if study.metric_names != self.objectives:
            study.set_metric_names(self.objectives)  # the dashboard and Optuna's plots show val_acc, n_params
        self.study_id = self.rdb.get_study_id_from_name(self.study_name)
        log.info(f"study {study.study_name!r} in {shown_url(self.storage)}: {len(study.trials)} trials so far")
        if len(self.objectives) > 1:
            log.info(f"objectives {self.objectives}: Optuna cannot prune multi-objective trials; none is pruned")

        self.lock = threading.Lock()  # asking, telling and writing results happen one lane at a time
        self.failures, self.stop, self.errors, self.waiting_for = 0, False, [], []
        # Hydra's basic launcher runs jobs in this process, one at a time; other launchers (joblib,
        # submitit) run each lane's trial elsewhere, so a new trial starts as soon as any one ends.
        lanes = 1 if self.in_process else self.n_jobs
        with stop_requests() as self.stop_signal:  # Ctrl-C / SIGTERM: finish the trials in flight, start no more
            if lanes == 1:
                self._lane()  # in the main thread, where an in-process job can catch signals itself
            else:
                threads = [threading.Thread(target=self._lane, name=f"cnnsweep-lane-{i}") for i in range(lanes)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
        if not any(isinstance(error, DATABASE_ERRORS) for error in self.errors):
            self._write_results()  # (without the database, the files written after the last finished trial stand)
        if self.errors:
            raise self.errors[0]
        self.stop_signal.check()

    def ending(self, error: BaseException) -> tuple[str, int] | None:
        """The one line (and exit status) that ends a sweep stopped by `error`; None for a bug."""
        table = f"trials on record in {self.sweep_dir / TRIALS_FILE}" if self.sweep_dir else "no trial ran"
        if isinstance(error, Interrupted):
            return f"sweep {error}: {table}; rerun the same command to continue", error.exit_code
        if isinstance(error, SweepStopped):
            return f"{error}; {table}", error.exit_code
        if isinstance(error, UserError):
            return str(error), 2
        if isinstance(error, StorageUnavailable):
            return f"{error}; {table}", error.exit_code
        if isinstance(error, DATABASE_ERRORS):  # a connection that broke in the middle of a statement
            said = error_line(error, self.storage)
            return f"database {shown_url(self.storage)} failed: {said}; rerun the same command to continue; {table}", 1
        return None

    def _lane(self) -> None:
        """Run trials one after another until the study is full, the sweep aborts, or an error stops it."""
        try:
            while (trial_overrides := self._next_trial()) is not None:
                if trial_overrides is WAIT:
                    self._pause()
                    continue
                trial, overrides = trial_overrides
                with heartbeats(self.lanes, trial.number, self.study_id):
                    job = self._launch(overrides, trial.number)
                with self.lock:
                    self._finish(self._load(), trial.number, job)
                    self._write_results()
                    if self.failures > self.max_failure_rate * self.n_trials and not self.stop:
                        self.stop = True
                        self.errors.append(
                            SweepAborted(
                                f"{self.failures} trials failed, more than max_failure_rate={self.max_failure_rate} "
                                f"of n_trials={self.n_trials}"
                            )
                        )
        except BaseException as error:
            with self.lock:
                self.stop = True
                self.errors.append(error)

    def _launch(self, overrides: tuple[str, ...], number: int) -> JobReturn:
        """Run the trial's job. A job in another process that ended without returning (killed, out of
        memory, its node lost) is a failed job: its trial FAILs, and the sweep goes on."""
        try:
            [job] = self.launcher.launch([overrides], initial_job_idx=number)
        except Exception as error:
            if self.in_process:
                raise  # in this process: not a lost job, a bug
            said = " ".join(line.strip() for line in str(error).splitlines()[:2])  # submitit's: which job, what state
            lost = JobReturn(status=JobStatus.FAILED)
            lost.return_value = JobLost(said or type(error).__name__)
            return lost
        return job

    def _pause(self) -> None:
        """Wait a little (WAIT: other workers' trials are running on a full study), waking for a stop signal."""
        deadline = time.monotonic() + max(0.5, min(WAIT_POLL_S, self.heartbeat_interval or WAIT_POLL_S))
        while time.monotonic() < deadline and not (self.stop or self.stop_signal.signal_number is not None):
            time.sleep(0.2)

    def _next_trial(self) -> tuple[optuna.Trial, tuple[str, ...]] | object | None:
        """Ask for and claim the next trial with its job overrides; None when there is nothing left to run.

        Draws over the parameter budget are recorded as PRUNED here, without a job, and do not count.
        WAIT while the study is full but other workers' trials are still running: if one of those
        workers is lost (its heartbeat goes stale), its trial is re-queued and run here.
        """
        with self.lock:
            while not (self.stop or self.stop_signal.signal_number is not None):
                study = self._load()  # a fresh view: optuna's cache never re-reads its own trials
                lost = requeue_lost_trials(study, self.lanes)
                if lost:
                    log.warning(
                        f"trials {lost} were left RUNNING by a worker that stopped: failed, parameters re-queued"
                    )
                trials = self.rdb.get_all_trials(self.study_id, deepcopy=False)
                queued = any(t.state == TrialState.WAITING for t in trials)  # re-queued trials: ask() runs them first
                if not queued and n_counted(trials, self.counts_over_budget) >= self.n_trials:
                    return self._wait_for_others(trials)
                # Relative samplers (CMA-ES, NSGA-II, multivariate TPE) draw inside ask(): seed them for the
                # number the new trial will most likely get, and again once it is known.
                reseed(self.sampler, self.seed, self.study_name, len(trials))
                trial = study.ask()
                if not claim(study, self.lanes, trial, self.n_trials, self.counts_over_budget):
                    return None  # the remaining places are taken by other workers
                reseed(self.sampler, self.seed, self.study_name, trial.number)
                overrides = configure_trial(trial, self.distributions, self.fixed_params, self.fixed_overrides)
                if self._over_budget(study, trial, overrides):
                    continue
                trial.set_user_attr("run_dir", str(self.sweep_dir / str(trial.number)))  # known before it starts
                return trial, overrides  # launched as job number trial.number: its hydra.job.num and folder
            return None

    def _wait_for_others(self, trials: list[optuna.trial.FrozenTrial]) -> object | None:
        """WAIT while trials of other workers run (each lost one becomes this worker's to retry), else None."""
        me = this_worker()
        others = [t.number for t in trials if t.state == TrialState.RUNNING and t.system_attrs.get(OWNER) != me]
        if not others:
            return None
        if others != self.waiting_for:
            log.info(f"the study is full; waiting for trials {others} of other workers (one lost is run again here)")
            self.waiting_for = others
        return WAIT

    @property
    def counts_over_budget(self) -> bool:
        """Over-budget draws use up no trial, except in a grid, whose every point is drawn once."""
        return isinstance(self.sampler, GridSearch)

    def _over_budget(self, study: optuna.Study, trial: optuna.Trial, overrides: tuple[str, ...]) -> bool:
        """Build the trial's model from its config: True (and the trial PRUNED) if it is over budget.

        A config that does not compose, or a model that cannot be built, stops the sweep in one line
        unless the error names one of the trial's sampled parameters (then the trial FAILs alone).
        """
        try:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            check_config(cfg)  # unset (???) and unresolvable values, named as a plain run names them
            n_params = count_parameters(build_model(cfg.model))
            if cfg.budget.max_params is not None:  # feasible at <= 0: how far under the budget it is, too
                trial.set_constraint(BUDGET_CONSTRAINT, n_params - cfg.budget.max_params)
            check_budget(n_params, cfg.budget.max_params)
            return False
        except OverBudget as error:
            for key, item in over_budget_facts(error).items():
                trial.set_user_attr(key, item)
            tell(study, trial.number, None, TrialState.PRUNED)
            log.info(f"trial {trial.number} PRUNED before it started: {error}")
            self._check_over_budget_share(error.max_params)
            return True
        except (UserError, HydraException, OmegaConfBaseException) as error:
            message = str(error) if isinstance(error, UserError) else one_line(error)
            trial.set_user_attr(REASON, f"{type(error).__name__}: {message}")
            tell(study, trial.number, None, TrialState.FAIL)
            if names_a_parameter(message, trial.params):
                self.failures += 1
                return True
            raise SharedFailure(f"trial {trial.number} cannot start: {message}") from error

    def _check_over_budget_share(self, max_params: int) -> None:
        trials = [t for t in self.rdb.get_all_trials(self.study_id, deepcopy=False) if t.state != TrialState.WAITING]
        drawn = [t for t in trials if t.state != TrialState.FAIL]
        over = sum(bool(t.user_attrs.get(OVER_BUDGET)) for t in drawn)
        if over >= OVER_BUDGET_MIN_DRAWS and over >= OVER_BUDGET_SHARE * len(drawn):
            raise SharedFailure(
                f"{over} of the study's {len(drawn)} draws ({over / len(drawn):.0%}) were over budget.max_params="
                f"{max_params:,}: the search space is almost all over budget; narrow the width ranges in "
                "hydra.sweeper.params (or raise budget.max_params)"
            )

    @property
    def seed(self) -> int | None:
        """The sampler's configured seed (hydra.sweeper.sampler.seed), if any."""
        return self.config.hydra.sweeper.sampler.get("seed")

    def _search_space(self, arguments: list[str]) -> tuple[dict[str, BaseDistribution], dict[str, Any]]:
        """Distributions and fixed values from hydra.sweeper.params and the command line (as upstream)."""
        params = [f"{key}={value}" for key, value in (self.params or {}).items()]
        distributions, fixed_params, self.fixed_overrides = search_space([*params, *arguments])
        if isinstance(self.sampler, functools.partial) and self.sampler.func is GridSearch:
            self.sampler = self.sampler(distributions)
            self.n_trials = min(self.n_trials, self.sampler.n_points)
        return distributions, fixed_params

    def _load(self) -> optuna.Study:
        return optuna.load_study(study_name=self.study_name, storage=self.rdb, sampler=self.sampler, pruner=self.pruner)

    def _finish(self, study: optuna.Study, number: int, job: JobReturn) -> None:
        """Record the job's outcome on its trial (and count it if it failed)."""
        trial_id = self.rdb.get_trial_id_from_study_id_trial_number(self.study_id, number)
        attrs = self._job_facts(job)
        values, state, error = None, TrialState.COMPLETE, None
        try:
            returned = job.return_value  # (raises the job's exception when it failed)
        except Exception as raised:
            error = raised
        else:
            values = [float(v) for v in (returned if isinstance(returned, (list, tuple)) else [returned])]
            if len(values) != len(self.objectives):
                error = UserError(f"the job returned {len(values)} values for the objectives {self.objectives}")
        if error is not None:
            pruned = isinstance(error, (optuna.TrialPruned, OverBudget))
            state, values = (TrialState.PRUNED if pruned else TrialState.FAIL), None
            attrs[REASON] = str(error) if pruned else f"{type(error).__name__}: {error}"
            if timed_out(error):
                minutes = self.config.hydra.launcher.get("timeout_min")
                attrs[REASON] = f"timed out: the job ran into hydra.launcher.timeout_min={minutes}; raise it"
            if isinstance(error, OverBudget):
                attrs |= over_budget_facts(error)
            log.warning(f"trial {number} {state.name}: {attrs[REASON]}")
        for key, item in attrs.items():
            self.rdb.set_trial_user_attr(trial_id, key, item)
        if isinstance(error, Interrupted):  # not the trial's fault: run its parameters again later
            retry_later(study, self.rdb, trial_id, attrs[REASON])
            self.stop = True
            self.errors.append(error)
            return
        tell(study, number, values, state)
        if state == TrialState.FAIL:
            self.failures += 1
            params = self.rdb.get_trial(trial_id).params  # (study.trials would copy every trial of the study)
            if isinstance(error, UserError) and not names_a_parameter(str(error), params):
                self.stop = True
                self.errors.append(
                    SharedFailure(f"trial {number} failed: {error}; every trial would fail the same way")
                )

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
        rows, overrides = study_rows(self.rdb.get_all_trials(self.study_id), self.objectives)
        header = {"name": "optuna", "study_name": self.study_name, "storage": shown_url(self.storage)}
        best = write_results(self.sweep_dir, rows, overrides, self.objectives, self.directions, header)
        if isinstance(best, list):
            log.info(f"Pareto front so far: trials {[row['number'] for row in best]}")
        elif best is not None:
            log.info(f"best so far: trial {best['number']}, value {best['value']}")


def warn_of_a_typed_password(storage: str, hydra_overrides: list[str]) -> None:
    """One warning line if the storage URL's password was typed on the command line, which Hydra records."""
    password = password_of(storage)
    if password and any(password in override for override in hydra_overrides):
        log.warning(
            "the storage URL's password is on the command line, and Hydra records command-line overrides in "
            "multirun.yaml and each job's .hydra/ (cnnsweep masks it in its own files and logs): pass "
            "'hydra.sweeper.storage=${oc.env:CNNSWEEP_STORAGE}' instead (README, Sweeps: Parallel)"
        )


def one_try_per_job(launcher: Any) -> None:
    """Stop submitit from requeueing a job that reaches hydra.launcher.timeout_min.

    submitit's local executor requeues such a job up to 3 times (SLURM's config: 0, and a key of its own):
    the trial would start over from its first epoch each time, then FAIL anyway. With one try, it FAILs at
    its first timeout. `params` is hydra-submitit-launcher's dict of settings, which it passes to submitit.
    """
    params = getattr(launcher, "params", None)
    if isinstance(params, dict):
        params.setdefault("max_num_timeout", 0)


def timed_out(error: BaseException) -> bool:
    """Whether submitit stopped the job at hydra.launcher.timeout_min (its signal, raised inside the job)."""
    return type(error).__name__ == "UncompletedJobError" and "timed-out" in str(error)


def over_budget_facts(error: OverBudget) -> dict[str, Any]:
    """What a trial whose network was over budget records (in the sweep's process or its job)."""
    return {"n_params": error.n_params, OVER_BUDGET: True, REASON: str(error)}


def tell(study: optuna.Study, number: int, values: list[float] | None, state: TrialState) -> None:
    """study.tell, also when the grid sampler, covered, asks the study to stop."""
    try:
        study.tell(number, values, state=state)
    except RuntimeError as stopped:
        # GridSampler calls study.stop() once the grid is covered, which only works inside
        # study.optimize; the trial's state and values are stored before that.
        if "Study.stop" not in str(stopped):
            raise


def configure_trial(
    trial: optuna.Trial,
    distributions: dict[str, BaseDistribution],
    fixed_params: dict[str, Any],
    fixed_overrides: list[str],
) -> tuple[str, ...]:
    """Draw the trial's parameters (Optuna's public suggest_* calls) and return its job's overrides."""
    for name, distribution in distributions.items():
        if isinstance(distribution, CategoricalDistribution):
            trial.suggest_categorical(name, distribution.choices)
        elif isinstance(distribution, IntDistribution):
            trial.suggest_int(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
        elif isinstance(distribution, FloatDistribution):
            trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
        else:  # pragma: no cover - hydra-optuna-sweeper makes only these three
            raise UserError(f"{name}: a {type(distribution).__name__} cannot be swept")
    params = {**trial.params, **fixed_params}
    return (*(f"{name}={value}" for name, value in params.items()), *fixed_overrides)


def names_a_parameter(message: str, params: dict[str, Any]) -> bool:
    """Whether an error message names a sampled parameter (or its list, for `model.widths.3`):
    then the failure is that trial's own, not one every trial shares."""
    keys = set(params) | {name.rpartition(".")[0] for name in params if name.rpartition(".")[2].isdigit()}
    return any(key and key in message for key in keys)
