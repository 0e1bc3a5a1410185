"""cnnsweep's Optuna sweeper: hydra-optuna-sweeper's search-space handling with a sturdier loop.

What it adds to the released sweeper (whose config and search-space parsing it reuses):
- the study's direction(s) follow `objective` (one name, or several for a Pareto front), and an
  explicit `direction` that contradicts them is refused before any trial;
- every sampler runs with every search space (the grid splits intervals), seeded per study and trial;
- every job learns its trial (trial N runs as job N: `hydra.job.num`) and reports to it each epoch, so
  the pruner can stop it: such trials are PRUNED, not FAIL (multi-objective trials run unpruned:
  Optuna cannot prune them);
- `repeats=K` trains each trial on K seeds, one job each, spread over the lanes; the trial's value is their
  mean (repeats.py); a free lane runs the next pending repeat of this worker's trials before it asks for a
  new trial;
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
  says why in one line, with the path of trials.csv, and exits non-zero;
- with `confirm.top=N`, its last stage re-trains the N best configurations on `confirm.seeds` fresh seeds
  and ranks them with intervals (confirming.py).

StudySweeper is the loop; each of its jobs has a module:
    claims.py    ask the study for this worker's next trial, claim it, wait for other workers
    repeats.py   a trial's repeats: their seeds, jobs and folders, and what they come to together
    budget.py    hold each drawn trial to budget.max_params before its job starts
    outcomes.py  what a trial's job came to: COMPLETE with its values, PRUNED or FAIL with the reason
    endings.py   the failure policy, the results files, the one line a stopped sweep ends with
    confirming.py  the last stage: the best configurations on fresh seeds (confirmation.py: their analysis)
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from cnnsweep.errors import UserError
from cnnsweep.files import MULTIRUN_FILE
from cnnsweep.objectives import checked_directions
from cnnsweep.packages import check_packages
from cnnsweep.records import RUN_DIR
from cnnsweep.sweep.attrs import CURVE, OVERRIDES, PRUNED_BY, REASON, REPEAT, REPEAT_SEEDS, REPEATS_RAN, VALUES_SD
from cnnsweep.sweep.budget import BudgetCheck
from cnnsweep.sweep.claims import WAIT, TrialClaims, pause
from cnnsweep.sweep.confirming import ConfirmationStage, confirm_settings
from cnnsweep.sweep.endings import FailurePolicy, ending_line, write_sweep_results
from cnnsweep.sweep.noise import repeat_seeds
from cnnsweep.sweep.outcomes import JobLost, Outcome, job_outcome, tell
from cnnsweep.sweep.repeats import TrialRepeats, check_repeats, repeat_record, trial_outcome
from cnnsweep.sweep.results import repeat_records, row_params, row_values, sweep_objectives
from cnnsweep.sweep.samplers import GridSearch, check_objectives, configure_trial, search_space
from cnnsweep.sweep.storage import DATABASE_ERRORS, password_of, shown_url
from cnnsweep.sweep.study import Lanes, heartbeats, open_storage, retry_later
from cnnsweep.track import build_loggers
from cnnsweep.train.signals import Interrupted, stop_requests

log = logging.getLogger(__name__)


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
        confirm: Any = None,
        repeats: int = 1,
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
        self.confirm = confirm  # hydra.sweeper.confirm: {top, seeds}
        self.repeats = repeats
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
        check_repeats(self.repeats, list(self.distributions))
        self.seeds = repeat_seeds(self.config.seed, self.repeats)  # [seed] with one repeat
        check_objectives(self.sampler, self.objectives)
        # a sampler, launcher or logger whose package is missing: one line now, not a traceback mid-sweep
        check_packages(OmegaConf.to_container(self.config, resolve=False), self.config.hydra.runtime.choices)
        self.confirm_top, self.confirm_seeds = confirm_settings(self.confirm, self.distributions)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        # Unresolved, as Hydra saves each job's .hydra/: a storage URL read with ${oc.env:...} stays that text here.
        OmegaConf.save(self.config, self.sweep_dir / MULTIRUN_FILE)
        warn_of_a_typed_password(self.storage, self.config.hydra.overrides.hydra)
        self.rdb = open_storage(self.storage, self.heartbeat_interval, self.grace_period)
        self.lanes = Lanes(self.rdb, self.heartbeat_interval, self.grace_period)
        self.study_id = open_study(
            self.rdb, self.storage, self.study_name, self.sampler, self.pruner, self.objectives, self.directions
        )
        check_study_seeds(self.rdb, self.study_id, self.study_name, self.seeds)
        self.open_trials: list[TrialRepeats] = []  # this worker's trials with repeats pending or running
        self.trackers = build_loggers(self.config.get("logger")).sweep_trackers()  # MLflow's parent run
        self.trackers.start(self.sweep_dir, self.study_name, self.directions, self.objectives)
        self.lock = threading.Lock()  # asking, telling and writing results happen one lane at a time
        self.policy = FailurePolicy(self.max_failure_rate, self.n_trials)
        self.claims = TrialClaims(
            storage=self.rdb, lanes=self.lanes, study_id=self.study_id, study_name=self.study_name,
            sampler=self.sampler, pruner=self.pruner, seed=self.seed, n_trials=self.n_trials,
            counts_over_budget=isinstance(self.sampler, GridSearch),  # a grid draws each point once
        )  # fmt: skip
        self.budget = BudgetCheck(self.hydra_context.config_loader, self.config, self.rdb, self.study_id, self.policy)
        # Hydra's basic launcher runs jobs in this process, one at a time; other launchers (joblib,
        # submitit) run each lane's trial elsewhere, so a new trial starts as soon as any one ends.
        with stop_requests() as self.stop_signal:  # Ctrl-C / SIGTERM: finish the trials in flight, start no more
            run_lanes(self._lane, 1 if self.in_process else self.n_jobs)
        # Without the database, the files written after the last finished trial stand.
        if not any(isinstance(error, DATABASE_ERRORS) for error in self.policy.errors):
            self._requeue_unfinished()
            best = self._write_results()
            self.trackers.end([{"number": row["number"], "values": row_values(row, self.objectives),
                                "params": row_params(row)} for row in best])  # fmt: skip
        if self.policy.errors:
            raise self.policy.errors[0]
        self.stop_signal.check()
        if self.confirm_top:
            self._confirm()

    def _confirm(self) -> None:
        """The sweep's last stage: its best configurations re-trained on fresh seeds (cnnsweep.sweep.confirming)."""
        stage = ConfirmationStage(
            self, self.confirm_top, self.confirm_seeds,
            lambda overrides, number: launch_job(self.launcher, overrides, number, self.in_process),
        )  # fmt: skip
        with stop_requests() as self.stop_signal:
            stage.stop_signal = self.stop_signal
            stage.prepare()
            run_lanes(stage.lane, 1 if self.in_process else self.n_jobs)
        if not any(isinstance(error, DATABASE_ERRORS) for error in stage.policy.errors):
            winner = stage.write_results()
            if winner is not None:
                self.trackers.confirmed(winner)  # MLflow's parent run
        if stage.policy.errors:
            raise stage.policy.errors[0]
        self.stop_signal.check()

    def ending(self, error: BaseException) -> tuple[str, int] | None:
        """The one line (and exit status) that ends a sweep stopped by `error`; None for a bug."""
        return ending_line(error, self.sweep_dir, self.storage)

    def _lane(self) -> None:
        """Run trials one after another until the study is full, the sweep aborts, or an error stops it."""
        try:
            while (claimed := self._next_job()) is not None:
                if claimed is WAIT:
                    pause(self.heartbeat_interval, self._stopping)
                    continue
                trial, repeat = claimed
                overrides, job_num = trial.job(repeat)
                with heartbeats(self.lanes, trial.number, self.study_id):
                    job = launch_job(self.launcher, overrides, job_num, self.in_process)
                with self.lock:
                    self._finish(self.claims.load(), trial, repeat, job)
                    self._write_results()
                    self.policy.check_failure_rate()
        except BaseException as error:
            with self.lock:
                self.policy.stop_with(error)

    def _stopping(self) -> bool:
        """Whether to start no more trials: the sweep stopped, or Ctrl-C / SIGTERM came."""
        return self.policy.stopped or self.stop_signal.signal_number is not None

    def _next_job(self) -> tuple[TrialRepeats, int] | object | None:
        """The next job to run: a pending repeat of this worker's trials, else the first job of a new trial
        (asked for and claimed); None when there is nothing left to run.

        Draws over the parameter budget are recorded as PRUNED here, without a job, and do not count.
        WAIT while the study is full but other workers' trials are still running: if one of those
        workers is lost (its heartbeat goes stale), its trial is re-queued and run here.
        """
        with self.lock:
            while not self._stopping():
                if pending := next((t for t in self.open_trials if t.pending), None):
                    if not self._pruned_by(pending.number):
                        return pending, pending.take()
                    pending.pending.clear()  # the pruner stopped the trial: start none of its other repeats
                    self._conclude_if_finished(self.claims.load(), pending)
                    continue
                asked = self.claims.next_trial()
                if asked is None or asked is WAIT:
                    return asked
                study, trial = asked
                try:
                    overrides = configure_trial(trial, self.distributions, self.fixed_params, self.fixed_overrides)
                except Exception as error:  # relative samplers (CMA-ES, GP, ...) draw at the first suggest
                    raise self.claims.failed_draw(study, trial.number, error) from error
                if self.budget.over_budget(study, trial, overrides):
                    continue
                trial.set_user_attr(RUN_DIR, str(self.sweep_dir / str(trial.number)))  # known before it starts
                carried = self._carried_over(trial, overrides)
                if self.repeats > 1:
                    trial.set_user_attr(OVERRIDES, list(overrides))  # the trial's; each repeat adds its seed
                repeats = TrialRepeats(trial.number, overrides, self.seeds, carried)
                self.open_trials.append(repeats)
                if not repeats.pending:  # all its repeats had ended before it was re-queued
                    self._conclude_if_finished(study, repeats)
                    continue
                return repeats, repeats.take()  # launched as job number trial.number (K = 1): its hydra.job.num
            return None

    def _finish(self, study: optuna.Study, trial: TrialRepeats, repeat: int, job: JobReturn) -> None:
        """Record the job's outcome on its trial (and count it if it failed)."""
        trial_id = self.rdb.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
        name = f"{trial.number}" + (f" repeat {repeat} (seed {trial.seeds[repeat]})" if self.repeats > 1 else "")
        outcome = job_outcome(job, name, self.objectives, self.config.hydra.launcher.get("timeout_min"))
        if trial.closed:  # re-queued (interrupted) while this repeat ran: the retry runs it again
            return
        if self.repeats == 1:
            for key, item in outcome.attrs.items():
                self.rdb.set_trial_user_attr(trial_id, key, item)
        if isinstance(outcome.error, Interrupted):  # not the trial's fault: run its parameters again later
            trial.closed = True
            self.open_trials.remove(trial)
            retry_later(study, self.rdb, trial_id, outcome.attrs[REASON])  # its ended repeats are carried over
            self.policy.stop_with(outcome.error)
            return
        if self.repeats == 1:
            self._tell(study, trial, outcome)
            return
        curve = self.rdb.get_trial(trial_id).system_attrs.get(CURVE.format(repeat))
        record = repeat_record(trial.seeds[repeat], outcome, curve)
        self.rdb.set_trial_user_attr(trial_id, REPEAT.format(repeat), record)
        trial.ended(repeat, record, outcome.error)
        self._conclude_if_finished(study, trial)

    def _carried_over(self, trial: optuna.Trial, overrides: tuple[str, ...]) -> dict[int, dict[str, Any]]:
        """The records of the repeats that had ended, of a re-queued trial (copied onto it), when they trained
        what this sweep would: a rerun with other overrides (say, more epochs) runs all its repeats again."""
        if self.repeats == 1:
            return {}
        carried = repeat_records(trial.user_attrs, self.repeats)
        if carried and trial.user_attrs.get(OVERRIDES) != list(overrides):
            log.info(f"trial {trial.number}: its carried-over repeats ran with other overrides; all run again")
            return {}
        return carried

    def _conclude_if_finished(self, study: optuna.Study, trial: TrialRepeats) -> None:
        """Tell a trial whose repeats have all ended what they came to together (repeats.py's rules)."""
        if not trial.finished or trial.closed:
            return
        outcome = trial_outcome(trial, self._pruned_by(trial.number))
        trial_id = self.rdb.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
        for key, item in outcome.attrs.items():
            self.rdb.set_trial_user_attr(trial_id, key, item)
        if outcome.state != TrialState.COMPLETE:
            log.warning(f"trial {trial.number} {outcome.state.name}: {outcome.attrs[REASON]}")
        self._tell(study, trial, outcome)

    def _tell(self, study: optuna.Study, trial: TrialRepeats, outcome: Outcome) -> None:
        trial.closed = True
        if trial in self.open_trials:
            self.open_trials.remove(trial)
        tell(study, trial.number, outcome.values, outcome.state)
        if outcome.state == TrialState.FAIL:
            trial_id = self.rdb.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
            params = self.rdb.get_trial(trial_id).params  # (study.trials would copy every trial of the study)
            self.policy.trial_failed(trial.number, outcome.error, params)

    def _pruned_by(self, number: int) -> str | None:
        """Why the pruner stopped trial `number` (a job of one of its repeats marked it), or None."""
        if self.repeats == 1:
            return None
        trial_id = self.rdb.get_trial_id_from_study_id_trial_number(self.study_id, number)
        return self.rdb.get_trial(trial_id).system_attrs.get(PRUNED_BY)

    def _requeue_unfinished(self) -> None:
        """Queue again the trials whose repeats the sweep stopped before running (too many failures, Ctrl-C):
        a rerun runs only those repeats (their finished ones are carried over); none is left RUNNING."""
        for trial in [t for t in self.open_trials if not t.closed and self.repeats > 1]:
            trial.closed = True
            trial_id = self.rdb.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
            unfinished = sorted({*trial.pending, *trial.running})
            reason = f"interrupted: the sweep stopped before its repeats {unfinished} ended"
            retry_later(self.claims.load(), self.rdb, trial_id, reason)
        self.open_trials.clear()

    def _write_results(self) -> list[dict[str, Any]]:
        """trials.csv and optimization_results.yaml, and the trials' ends to the trackers; the best rows."""
        header = {"name": "optuna", "study_name": self.study_name, "storage": shown_url(self.storage)}
        if self.repeats > 1:
            header["repeat_seeds"] = self.seeds  # every trial's value is the mean over these seeds
        trials = self.rdb.get_all_trials(self.study_id)
        best = write_sweep_results(self.sweep_dir, trials, self.objectives, self.directions, header, self.repeats)
        self.trackers.trials_ended(trials, {t.number: self._spread(t) for t in trials if VALUES_SD in t.user_attrs})
        return best

    def _spread(self, trial: FrozenTrial) -> dict[str, float]:
        """A trial's sd over its repeats, per objective, and how many ran: what the trackers show beside its mean."""
        sds = dict(zip(self.objectives, trial.user_attrs[VALUES_SD], strict=True))
        return {**{f"{name}.sd": sd for name, sd in sds.items()}, "repeats": trial.user_attrs[REPEATS_RAN]}

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


def open_study(
    rdb: BaseStorage,
    storage: str,
    study_name: str,
    sampler: Any,
    pruner: Any,
    objectives: list[str],
    directions: list[str],
) -> int:
    """Create the study, or load it and check it is this sweep's (directions, objectives); its id.

    `rdb` is the opened storage, `storage` its URL (named, password hidden, in the log and errors).
    """
    study = optuna.create_study(
        study_name=study_name, storage=rdb, sampler=sampler, pruner=pruner, directions=directions, load_if_exists=True
    )
    if [d.name.lower() for d in study.directions] != directions:
        raise UserError(
            f"study {study_name!r} in {shown_url(storage)} was made to "
            f"{[d.name.lower() for d in study.directions]}, not {directions} as objective="
            f"{objectives} asks; choose a new hydra.sweeper.study_name"
        )
    if study.metric_names != objectives:
        study.set_metric_names(objectives)  # the dashboard and Optuna's plots show val_acc, n_params
    study_id = rdb.get_study_id_from_name(study_name)
    log.info(f"study {study.study_name!r} in {shown_url(storage)}: {len(study.trials)} trials so far")
    if len(objectives) > 1:
        log.info(f"objectives {objectives}: Optuna cannot prune multi-objective trials; none is pruned")
    return study_id


def check_study_seeds(rdb: BaseStorage, study_id: int, study_name: str, seeds: list[int]) -> None:
    """Record the seeds a study's repeats train on, or refuse a rerun that would train on others."""
    recorded = rdb.get_study_user_attrs(study_id).get(REPEAT_SEEDS)
    if recorded == seeds or (recorded is None and len(seeds) == 1):
        return
    if recorded is None and not rdb.get_all_trials(study_id, deepcopy=False):
        rdb.set_study_user_attr(study_id, REPEAT_SEEDS, seeds)
        return
    made = f"with repeats on the seeds {recorded}" if recorded else "with one seed per trial"
    raise UserError(
        f"study {study_name!r} was made {made}, not on {seeds} as hydra.sweeper.repeats={len(seeds)} and "
        f"seed={seeds[0]} ask; rerun with the study's settings or choose a new hydra.sweeper.study_name"
    )


def launch_job(launcher: Any, overrides: tuple[str, ...], number: int, in_process: bool) -> JobReturn:
    """Run a trial's job as Hydra job number `number`. A job in another process that ended without
    returning (killed, out of memory, its node lost) is a failed job: its trial FAILs, the sweep goes on."""
    try:
        [job] = launcher.launch([overrides], initial_job_idx=number)
    except Exception as error:
        if in_process:
            raise  # in this process: not a lost job, a bug
        said = " ".join(line.strip() for line in str(error).splitlines()[:2])  # submitit's: which job, what state
        lost = JobReturn(status=JobStatus.FAILED)
        lost.return_value = JobLost(said or type(error).__name__)
        return lost
    return job


def run_lanes(lane: Callable[[], None], n_lanes: int) -> None:
    """Run `lane` once in each of `n_lanes` threads, or in this thread when there is one."""
    if n_lanes == 1:
        lane()  # in the main thread, where an in-process job can catch signals itself
        return
    threads = [threading.Thread(target=lane, name=f"cnnsweep-lane-{i}") for i in range(n_lanes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


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
