"""The parameter budget, checked in the sweep's own process before a trial's job starts.

Each drawn trial's config is composed and its model built and counted there: its distance to
`budget.max_params` becomes the trial's Optuna constraint (`n_params - max_params`, feasible at <= 0,
read by samplers such as TPE), and a model over budget is PRUNED without a job. A search space
whose draws are almost all over budget stops the sweep in one line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import optuna
from hydra.core.config_loader import ConfigLoader
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from cnnsweep.cli import check_config, one_line
from cnnsweep.errors import UserError
from cnnsweep.sweep.attrs import BUDGET_CONSTRAINT, OVER_BUDGET, REASON
from cnnsweep.sweep.endings import FailurePolicy, SharedFailure, names_a_parameter
from cnnsweep.sweep.outcomes import over_budget_facts, tell
from cnnsweep.train.model import OverBudget, check_budget, model_size

log = logging.getLogger(__name__)

# An almost all over-budget search space: stop once this share of at least this many draws was over budget.
OVER_BUDGET_SHARE = 0.9
OVER_BUDGET_MIN_DRAWS = 40


@dataclass
class BudgetCheck:
    """Holds each drawn trial to `budget.max_params` before it runs."""

    config_loader: ConfigLoader  # composes a trial's config from the sweep's and the trial's overrides
    sweep_config: DictConfig
    storage: BaseStorage
    study_id: int
    policy: FailurePolicy  # counts a trial that cannot be configured

    def over_budget(self, study: optuna.Study, trial: optuna.Trial, overrides: tuple[str, ...]) -> bool:
        """Build the trial's model from its config: True (and the trial PRUNED) if it is over budget.

        A config that does not compose, or a model that cannot be built, stops the sweep in one line
        unless the error names one of the trial's sampled parameters (then the trial FAILs alone).
        """
        try:
            cfg = self.config_loader.load_sweep_config(self.sweep_config, list(overrides))
            check_config(cfg)  # unset (???) and unresolvable values, named as a plain run names them
            n_params = model_size(cfg.model)
            if cfg.budget.max_params is not None:  # feasible at <= 0: how far under the budget it is, too
                trial.set_constraint(BUDGET_CONSTRAINT, n_params - cfg.budget.max_params)
            check_budget(n_params, cfg.budget.max_params)
            return False
        except OverBudget as error:
            for key, item in over_budget_facts(error).items():
                trial.set_user_attr(key, item)
            tell(study, trial.number, None, TrialState.PRUNED)
            log.info(f"trial {trial.number} PRUNED before it started: {error}")
            self.check_over_budget_share(error.max_params)
            return True
        except (UserError, HydraException, OmegaConfBaseException) as error:
            message = str(error) if isinstance(error, UserError) else one_line(error)
            trial.set_user_attr(REASON, f"{type(error).__name__}: {message}")
            tell(study, trial.number, None, TrialState.FAIL)
            if names_a_parameter(message, trial.params):
                self.policy.count_failure()
                return True
            raise SharedFailure(f"trial {trial.number} cannot start: {message}") from error

    def check_over_budget_share(self, max_params: int) -> None:
        """SharedFailure once almost all of the study's draws (at least OVER_BUDGET_MIN_DRAWS) were over budget."""
        trials = self.storage.get_all_trials(self.study_id, deepcopy=False)
        drawn = [t for t in trials if t.state not in (TrialState.WAITING, TrialState.FAIL)]
        over = sum(bool(t.user_attrs.get(OVER_BUDGET)) for t in drawn)
        if over >= OVER_BUDGET_MIN_DRAWS and over >= OVER_BUDGET_SHARE * len(drawn):
            raise SharedFailure(
                f"{over} of the study's {len(drawn)} draws ({over / len(drawn):.0%}) were over budget.max_params="
                f"{max_params:,}: the search space is almost all over budget; narrow the width ranges in "
                "hydra.sweeper.params (or raise budget.max_params)"
            )
