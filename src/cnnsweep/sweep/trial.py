"""The job's side of an Optuna sweep: report the objective every epoch and stop when pruned.

cnnsweep's sweeper launches trial N as job number N, so each job knows its trial from `hydra.job.num`
(Hydra 1.4 lets no job change `hydra.sweeper.*`); the job opens the study from `hydra.sweeper.storage`
and `hydra.sweeper.study_name` and reports to its own trial there, so pruning works with every
launcher (in-process, joblib, submitit) and across machines sharing one storage. The job reads the
storage URL itself (a `${oc.env:...}` one from its own environment) and, like the sweeper, waits out a
database that is briefly unreachable (cnnsweep.sweep.storage) before it gives up on its trial.

With `hydra.sweeper.repeats=K` (K > 1), repeat r of trial N runs as job N * K + r (repeats.py), and its
job does not report to the trial directly (K jobs would write K values at one step): it writes its
objective after each epoch on the trial (system attr `cnnsweep:curve_<r>`, its own key, so the repeats'
jobs never overwrite one another) and then reads the others'. The rule: once all K repeats have reached
epoch e, the mean of their values at e is reported to the trial at step e and the pruner asked (by
whichever job completed the set: each writes before it reads, so the last of them sees all K). A trial the
pruner stops is marked (`cnnsweep:pruned`, with the reason); every other repeat of it stops, PRUNED,
after its next epoch, and the sweeper starts none of its pending repeats.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.storages import BaseStorage

from cnnsweep.errors import make
from cnnsweep.files import CONFIRM_DIR
from cnnsweep.records import RunStatus
from cnnsweep.sweep.attrs import CURVE, PRUNED_BY
from cnnsweep.sweep.plugin_facts import PRUNER_TARGETS, TARGET
from cnnsweep.sweep.repeats import job_place
from cnnsweep.sweep.study import open_storage
from cnnsweep.track import SweepInfo

log = logging.getLogger(__name__)


class Pruned(optuna.TrialPruned):
    """The pruner stopped this trial."""

    run_status = RunStatus.PRUNED  # how a run stopped by this error ends


class TrialReporter:
    """Reports one trial's intermediate objective values and asks the pruner after each."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def report(self, epoch: int, value: float, last: bool) -> None:
        self.trial.report(value, step=epoch)
        if not last and self.trial.should_prune():
            raise Pruned(f"pruned after epoch {epoch} (objective {value:.4f})")


class RepeatReporter:
    """Reports one repeat's objective each epoch; the mean over the trial's repeats goes to the trial and its
    pruner once all have reached that epoch (the module's rule)."""

    def __init__(self, trial: optuna.Trial, storage: BaseStorage, trial_id: int, repeat: int, repeats: int) -> None:
        self.trial, self.storage, self.trial_id = trial, storage, trial_id
        self.repeat, self.repeats = repeat, repeats
        self.curve: list[float] = []

    def report(self, epoch: int, value: float, last: bool) -> None:
        self.curve = [*self.curve[: epoch - 1], value]
        self.storage.set_trial_system_attr(self.trial_id, CURVE.format(self.repeat), self.curve)
        frozen = self.storage.get_trial(self.trial_id)
        if (reason := frozen.system_attrs.get(PRUNED_BY)) is not None:
            raise Pruned(f"stopped after epoch {epoch}: the trial was {reason}")
        curves = [frozen.system_attrs.get(CURVE.format(r)) or [] for r in range(self.repeats)]
        if epoch in frozen.intermediate_values or any(len(curve) < epoch for curve in curves):
            return  # reported already, or not all repeats have reached this epoch
        mean = statistics.fmean(curve[epoch - 1] for curve in curves)
        self.trial.report(mean, step=epoch)
        if not last and self.trial.should_prune():
            reason = f"pruned after epoch {epoch} (mean objective of {self.repeats} repeats {mean:.4f})"
            self.storage.set_trial_system_attr(self.trial_id, PRUNED_BY, reason)
            raise Pruned(reason)


def connect_trial(hydra_cfg: DictConfig) -> TrialReporter | RepeatReporter | None:
    """The reporter for this job's trial, or None when the job is not a cnnsweep Optuna trial."""
    sweeper = cnnsweep_sweeper(hydra_cfg)
    if sweeper is None or is_confirmation(hydra_cfg):
        return None  # (a confirmation run is never pruned)
    repeats = sweeper.get("repeats", 1)
    number, repeat = job_place(int(hydra_cfg.job.num), repeats)
    storage = open_storage(sweeper.storage)
    pruner = make(sweeper.pruner, _execution_whitelist_=PRUNER_TARGETS) if sweeper.get("pruner") else None
    study = optuna.load_study(study_name=sweeper.study_name, storage=storage, pruner=pruner)
    if len(study.directions) > 1:
        return None  # Optuna cannot prune multi-objective trials (the sweeper says so once)
    study_id = storage.get_study_id_from_name(sweeper.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    trial = optuna.trial.Trial(study, trial_id)
    if repeats > 1:
        log.info(f"reporting to trial {number} of study {sweeper.study_name!r} as its repeat {repeat}")
        return RepeatReporter(trial, storage, trial_id, repeat, repeats)
    log.info(f"reporting to trial {number} of study {sweeper.study_name!r}")
    return TrialReporter(trial)


def cnnsweep_sweeper(hydra_cfg: DictConfig) -> Any:
    """The job's `hydra.sweeper` node when the job is a trial of cnnsweep's sweeper, else None."""
    sweeper: Any = hydra_cfg.get("sweeper")
    return sweeper if sweeper is not None and sweeper.get("_target_") == TARGET else None


def is_confirmation(hydra_cfg: DictConfig) -> bool:
    """Whether the job is a confirmation run (cnnsweep.sweep.confirming), told by its folder: <sweep>/confirm/...
    Its job number is its confirmation trial's, not a search trial's."""
    sweep = hydra_cfg.get("sweep") or {}  # (a job's hydra config always has it; a hand-made one may not)
    return str(sweep.get("subdir", "")).split("/", 1)[0] == CONFIRM_DIR


def trial_place(hydra_cfg: DictConfig) -> SweepInfo | None:
    """Where this job's run belongs, for the experiment trackers: its sweep folder, study, trial number
    and the values the sampler drew for it; None when the job is not a cnnsweep Optuna trial."""
    sweeper = cnnsweep_sweeper(hydra_cfg)
    if sweeper is None or is_confirmation(hydra_cfg):
        return None  # (a confirmation run is tracked as a run of its own)
    repeats = sweeper.get("repeats", 1)
    number, repeat = job_place(int(hydra_cfg.job.num), repeats)
    storage = open_storage(sweeper.storage)
    study_id = storage.get_study_id_from_name(sweeper.study_name)
    trial = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, number))
    return SweepInfo(
        Path(hydra_cfg.sweep.dir),
        sweeper.study_name,
        number,
        dict(trial.params),
        repeat=repeat if repeats > 1 else None,
    )
