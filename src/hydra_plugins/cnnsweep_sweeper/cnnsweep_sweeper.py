"""Registers cnnsweep's Optuna sweeper with Hydra: `hydra/sweeper=cnnsweep`.

Its config is hydra-optuna-sweeper's (sampler, direction, storage, study_name, n_trials, n_jobs,
max_failure_rate, params, ...) with different defaults and a few more keys; the loop itself is
cnnsweep.sweep.sweeper.StudySweeper. Hydra finds the class through the `hydra.plugins` entry point in
pyproject.toml (Hydra 1.4's way; scanning the hydra_plugins namespace is deprecated) and imports this
module then, so it stays light: optuna and torch are imported only when a sweep starts.
"""

import sys
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.config import GPSamplerConfig, GridSamplerConfig, OptunaSweeperConf
from omegaconf import MISSING, DictConfig

from cnnsweep.files import STUDY_DB
from cnnsweep.sweep.plugin_facts import PRUNER_TARGETS, SAMPLER_TARGETS, TARGET, TPEConf

# OmegaConf reads these annotations at runtime: keep typing's Optional/List forms.
# ruff: noqa: UP006, UP007, UP035, UP045


@dataclass
class MedianPrunerConf:
    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 4  # trials that run to the end before any is pruned
    n_warmup_steps: int = 1  # steps are epochs, numbered from 1: 1 = prunable from the first epoch on
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class PercentilePrunerConf:
    _target_: str = "optuna.pruners.PercentilePruner"
    percentile: float = 25.0
    n_startup_trials: int = 4
    n_warmup_steps: int = 1
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class HyperbandPrunerConf:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1  # epochs
    max_resource: Any = "auto"
    reduction_factor: int = 3


@dataclass
class ThresholdPrunerConf:
    _target_: str = "optuna.pruners.ThresholdPruner"
    lower: Optional[float] = None  # stop a trial whose objective falls below this ...
    upper: Optional[float] = None  # ... or rises above this
    n_warmup_steps: int = 0
    interval_steps: int = 1


@dataclass
class NopPrunerConf:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class GPConf(GPSamplerConfig):
    """`hydra/sweeper/sampler=gp`: Optuna's GPSampler, shown the draws over the parameter budget as infeasible
    results (cnnsweep.sweep.samplers.BudgetAwareGP); Optuna's own sees only trials that trained."""

    _target_: str = "cnnsweep.sweep.samplers.BudgetAwareGP"


@dataclass
class MotpeRemovedConf:
    """`hydra/sweeper/sampler=motpe` is refused in one line: Optuna 4 removed MOTPE (TPE takes several objectives)."""

    _target_: str = "cnnsweep.sweep.samplers.motpe_removed"
    seed: Optional[int] = None  # (the searches set it: the refusal, not a composition error, is what is said)


@dataclass
class GridConf(GridSamplerConfig):
    """`hydra/sweeper/sampler=grid`: every combination of the parameters' values, with any search space."""

    _target_: str = "cnnsweep.sweep.samplers.GridSearch"
    interval_points: int = 3  # values an interval(...) is split into (geometric for tag(log, ...)); ints too
    seed: Optional[int] = None  # orders the grid's points


@dataclass
class ConfirmConf:
    """`hydra.sweeper.confirm`: the sweep's last stage re-trains its `top` best configurations (a multi-objective
    study: the `top` of its Pareto front best by the first objective) on `seeds` fresh seeds and ranks them
    with intervals (confirmation.csv; README, Noise). top 0: no confirmation."""

    top: int = 0
    seeds: int = 5


@dataclass
class CnnsweepSweeperConf(OptunaSweeperConf):
    _target_: str = TARGET
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])
    pruner: Any = MISSING
    # null: each objective's own (accuracies maximised, losses, n_params and train_seconds minimised);
    # an explicit direction (or list) that contradicts the objective is refused before any trial.
    direction: Any = None
    # The study persists here, so rerunning the same command continues it. Any SQLAlchemy URL works
    # (postgresql://user:password@host/db lets workers on several machines share a study), and so does
    # journal:///abs/path/study.log: Optuna's JournalStorage, one file, no database server.
    storage: Optional[Any] = f"sqlite:///${{hydra.sweep.dir}}/{STUDY_DB}"
    study_name: Optional[str] = "cnnsweep"
    n_trials: int = 20  # trials in the whole study, across restarts and workers
    n_jobs: int = 1  # trials launched at once (the launcher runs them; joblib: in parallel)
    # The sweep stops once more than max_failure_rate * n_trials of its trials FAILed (a crash,
    # a NaN loss); pruned and over-budget trials do not count as failures.
    max_failure_rate: float = 0.25
    heartbeat_interval: int = 60  # seconds between "still running" marks on each running trial
    grace_period: Optional[int] = None  # seconds without a mark before a trial counts as lost (2x interval)
    confirm: ConfirmConf = field(default_factory=ConfirmConf)
    # Seeds each trial trains on (one job each, spread over the lanes): its value is their mean. Every trial uses
    # the same seeds: seed, seed+1, ..., seed+repeats-1 (cnnsweep.sweep.noise.repeat_seeds).
    repeats: int = 1
    # (Each job's trial number is its hydra.job.num: the sweeper launches trial N as job N. Hydra 1.4 lets no
    # job change hydra.sweeper.*, so it can no longer be a per-job override.)


class CnnsweepSweeper(Sweeper):
    """Thin Hydra plugin class; the work happens in cnnsweep.sweep.sweeper.StudySweeper."""

    def __init__(self, sampler: Any, pruner: Any, **settings: Any) -> None:
        from cnnsweep.errors import UserError, make
        from cnnsweep.sweep.sweeper import StudySweeper

        # Hydra 1.4 hands a plugin its config unbuilt (_recursive_=False): the sampler and pruner are made here.
        # A sampler refused in one line (motpe) is said when the sweep starts, where errors are one line.
        self.refused: UserError | None = None
        try:
            sampler = make(sampler, _execution_whitelist_=SAMPLER_TARGETS)
        except UserError as error:
            self.refused, sampler = error, None
        pruner = make(pruner, _execution_whitelist_=PRUNER_TARGETS)
        self.sweeper = StudySweeper(sampler=sampler, pruner=pruner, **settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> None:
        try:
            if self.refused is not None:
                raise self.refused
            self.sweeper.sweep(arguments)
        except Exception as error:
            ending = self.sweeper.ending(error)
            if ending is None:
                raise  # not the user's to fix: Hydra shows the traceback
            message, exit_code = ending
            print(f"error: {message}", file=sys.stderr)
            sys.exit(exit_code)


store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="cnnsweep", node=CnnsweepSweeperConf, provider="cnnsweep")
# Replace hydra-optuna-sweeper's `grid`, `tpe`, `gp` and `motpe` (whose config module is imported above, so its
# own entries are stored first): its grid cannot split intervals, so it ran with no search space that has one;
# its TPE turns off multivariate and constant_liar; its GP keeps drawing over budget; its motpe raises a
# ValueError with a traceback.
store.store(group="hydra/sweeper/sampler", name="grid", replace=True, node=GridConf, provider="cnnsweep")
store.store(group="hydra/sweeper/sampler", name="tpe", replace=True, node=TPEConf, provider="cnnsweep")
store.store(group="hydra/sweeper/sampler", name="gp", replace=True, node=GPConf, provider="cnnsweep")
store.store(group="hydra/sweeper/sampler", name="motpe", replace=True, node=MotpeRemovedConf, provider="cnnsweep")
for name, node in (
    ("median", MedianPrunerConf),
    ("percentile", PercentilePrunerConf),
    ("hyperband", HyperbandPrunerConf),
    ("threshold", ThresholdPrunerConf),
    ("nop", NopPrunerConf),
):
    store.store(group="hydra/sweeper/pruner", name=name, node=node, provider="cnnsweep")
