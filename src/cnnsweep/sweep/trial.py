"""The job's side of an Optuna sweep: report the objective every epoch and stop when pruned.

cnnsweep's sweeper launches trial N as job number N, so each job knows its trial from `hydra.job.num`
(Hydra 1.4 lets no job change `hydra.sweeper.*`); the job opens the study from `hydra.sweeper.storage`
and `hydra.sweeper.study_name` and reports to its own trial there, so pruning works with every
launcher (in-process, joblib, submitit) and across machines sharing one storage. The job reads the
storage URL itself (a `${oc.env:...}` one from its own environment) and, like the sweeper, waits out a
database that is briefly unreachable (cnnsweep.sweep.storage) before it gives up on its trial.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig

from cnnsweep.artifacts import RunStatus
from cnnsweep.errors import make
from cnnsweep.files import CONFIRM_DIR
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


def connect_trial(hydra_cfg: DictConfig) -> TrialReporter | None:
    """The reporter for this job's trial, or None when the job is not a cnnsweep Optuna trial."""
    from hydra_plugins.cnnsweep_sweeper.cnnsweep_sweeper import PRUNER_TARGETS

    sweeper = cnnsweep_sweeper(hydra_cfg)
    if sweeper is None or is_confirmation(hydra_cfg):
        return None  # (a confirmation run is never pruned)
    number = int(hydra_cfg.job.num)
    storage = open_storage(sweeper.storage)
    pruner = make(sweeper.pruner, _execution_whitelist_=PRUNER_TARGETS) if sweeper.get("pruner") else None
    study = optuna.load_study(study_name=sweeper.study_name, storage=storage, pruner=pruner)
    if len(study.directions) > 1:
        return None  # Optuna cannot prune multi-objective trials (the sweeper says so once)
    study_id = storage.get_study_id_from_name(sweeper.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    log.info(f"reporting to trial {number} of study {sweeper.study_name!r}")
    return TrialReporter(optuna.trial.Trial(study, trial_id))


def cnnsweep_sweeper(hydra_cfg: DictConfig) -> Any:
    """The job's `hydra.sweeper` node when the job is a trial of cnnsweep's sweeper, else None."""
    from hydra_plugins.cnnsweep_sweeper.cnnsweep_sweeper import TARGET

    sweeper: Any = hydra_cfg.get("sweeper")
    return sweeper if sweeper is not None and sweeper.get("_target_") == TARGET else None


def is_confirmation(hydra_cfg: DictConfig) -> bool:
    """Whether the job is a confirmation run (cnnsweep.sweep.confirming), told by its folder: <sweep>/confirm/...
    Its job number is its confirmation trial's, not a search trial's."""
    return str(hydra_cfg.sweep.get("subdir", "")).split("/", 1)[0] == CONFIRM_DIR


def trial_place(hydra_cfg: DictConfig) -> SweepInfo | None:
    """Where this job's run belongs, for the experiment trackers: its sweep folder, study, trial number
    and the values the sampler drew for it; None when the job is not a cnnsweep Optuna trial."""
    sweeper = cnnsweep_sweeper(hydra_cfg)
    if sweeper is None or is_confirmation(hydra_cfg):
        return None  # (a confirmation run is tracked as a run of its own)
    number = int(hydra_cfg.job.num)
    storage = open_storage(sweeper.storage)
    study_id = storage.get_study_id_from_name(sweeper.study_name)
    trial = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, number))
    return SweepInfo(Path(hydra_cfg.sweep.dir), sweeper.study_name, number, dict(trial.params))
