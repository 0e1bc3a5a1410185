"""`hydra/sweeper/sampler=gp` learns where the parameter budget ends from the draws over it."""

from __future__ import annotations

from unittest import mock

import optuna
import pytest
from optuna.trial import TrialState

from cnnsweep.schema import compose_config
from cnnsweep.sweep.attrs import BUDGET_CONSTRAINT
from cnnsweep.sweep.samplers import BudgetAwareGP, OverBudgetShown

STARTUP = 5


def budget_study(sampler: optuna.samplers.BaseSampler, draws: int) -> tuple[optuna.Study, int]:
    """Draws as the sweeper records them: the objective grows with the 'model size' x + y, and a draw
    with x + y > 1 is over budget (PRUNED with its positive constraint, never evaluated)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    over = 0
    for _ in range(draws):
        trial = study.ask()
        x, y = trial.suggest_float("x", 0.0, 1.0), trial.suggest_float("y", 0.0, 1.0)
        trial.set_constraint(BUDGET_CONSTRAINT, x + y - 1.0)
        if x + y > 1.0:
            study.tell(trial, state=TrialState.PRUNED)
            over += 1
        else:
            study.tell(trial, x + y - 0.1 * (x - y) ** 2)
    return study, over


@pytest.mark.parametrize("seed", [0, 1])
def test_the_gp_draws_few_models_over_budget_and_still_finds_the_budget_edge(seed):
    study, over = budget_study(BudgetAwareGP(seed=seed, n_startup_trials=STARTUP), draws=25)
    _, plain_over = budget_study(optuna.samplers.GPSampler(seed=seed, n_startup_trials=STARTUP), draws=25)
    # Measured (AMD EPYC), seeds 0-3: 7, 1, 2, 2 of 25 draws over budget, best value 0.966-1.0; Optuna's
    # own GP, blind to PRUNED trials, 20 of 20 after its 5 random ones in every seed (best 0.91-0.98).
    assert over <= 12 < 18 <= plain_over
    assert study.best_value > 0.95  # it searches along the budget's edge, where the best models are


def test_the_view_shows_over_budget_draws_as_infeasible_with_the_worst_value_and_changes_nothing():
    study, over = budget_study(optuna.samplers.RandomSampler(seed=3), draws=30)
    assert over > 0
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    shown = OverBudgetShown(study)._get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    assert len(shown) == len(complete) + over
    extra = [t for t in shown if t.constraints[BUDGET_CONSTRAINT] > 0]
    assert len(extra) == over and all(t.state == TrialState.COMPLETE for t in extra)
    assert {t.value for t in extra} == {min(t.value for t in complete)}
    assert [t.number for t in shown] == sorted(t.number for t in shown)
    assert len(study.get_trials(states=(TrialState.PRUNED,))) == over  # the study's own records are untouched


def test_the_gp_sampler_still_reads_trials_through_the_private_get_trials():
    """OverBudgetShown answers Study._get_trials (private): if GPSampler reads trials another way,
    this fails, and BudgetAwareGP would again be blind to the draws over budget."""
    study, _ = budget_study(optuna.samplers.RandomSampler(seed=4), draws=STARTUP + 2)
    trial = study.ask()
    space = {
        "x": optuna.distributions.FloatDistribution(0.0, 1.0),
        "y": optuna.distributions.FloatDistribution(0.0, 1.0),
    }
    with mock.patch.object(
        OverBudgetShown, "_get_trials", autospec=True, side_effect=OverBudgetShown._get_trials
    ) as seen:
        params = BudgetAwareGP(seed=0, n_startup_trials=STARTUP).sample_relative(
            study, study._storage.get_trial(trial._trial_id), space
        )
    assert seen.called and set(params) == {"x", "y"}


def test_the_gp_option_builds_the_budget_aware_sampler():
    cfg = compose_config(["hparams_search=architecture", "hydra/sweeper/sampler=gp"], with_hydra=True)
    assert cfg.hydra.sweeper.sampler._target_ == "cnnsweep.sweep.samplers.BudgetAwareGP"
