"""Optuna samplers as cnnsweep's sweeps use them: a grid over any search space, a GP that learns the
parameter budget, per-trial seeding, and each trial's draw from the search space.

Every sampler option (`hydra/sweeper/sampler=tpe|random|gp|qmc|cmaes|nsgaii|nsgaiii|grid`) runs with
every search space: the grid sampler splits continuous intervals into `interval_points` values, and a
seeded sampler is reseeded for each trial from the seed, the study's name and the trial's number.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Container, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from cnnsweep.errors import UserError
from cnnsweep.sweep.attrs import BUDGET_CONSTRAINT

# Private Optuna attributes (1 of 2): the sampler's own random state, by attribute name. Optuna keeps it in
# private attributes (each a LazyRandomState whose public `.rng` is a numpy RandomState) and offers no way
# to reseed them per trial (reseed_rng() draws a fresh, unreproducible seed). GridSampler, TPE, random, GP
# and NSGA-II hold `_rng`; CMA-ES seeds each trial's draw from `_cma_rng`.
# tests/test_samplers.py::test_the_samplers_keep_the_private_random_state_reseed_replaces fails if one goes.
RNG_ATTRIBUTES = ("_rng", "_cma_rng")
INNER_SAMPLERS = ("_random_sampler", "_independent_sampler")  # samplers a sampler delegates to (same test)


class GridSearch(optuna.samplers.GridSampler):
    """Optuna's GridSampler over a search space, each interval split into `interval_points` values.

    `hydra/sweeper/sampler=grid` makes it once the search space is known. `seed` orders the grid's
    points: trial N runs the N-th point of the grid shuffled by it (so parallel workers never pick one twice).
    """

    def __init__(
        self, distributions: dict[str, BaseDistribution], interval_points: int, seed: int | None = None
    ) -> None:
        if interval_points < 1:
            raise UserError(f"hydra.sweeper.sampler.interval_points={interval_points} must be at least 1")
        self.choices = {name: grid_choices(d, interval_points) for name, d in distributions.items()}
        super().__init__(self.choices, seed=seed)

    @property
    def n_points(self) -> int:
        return math.prod(len(choices) for choices in self.choices.values())


class BudgetAwareGP(optuna.samplers.GPSampler):
    """Optuna's GPSampler (`hydra/sweeper/sampler=gp`), shown the draws over the parameter budget.

    A draw over budget.max_params never trains: the sweeper records it PRUNED with its positive
    budget constraint. GPSampler models objectives and constraints from COMPLETE trials only, so it
    never saw those draws and proposed the same over-budget region again and again (on the
    architecture search, every draw after its 10 random ones). Here it sees each one as the
    infeasible result it is (OverBudgetShown): its constraint teaches the feasibility model where
    the budget ends, and the worst value of the trials that trained tells the objective's model
    that nothing better lies there. The study itself is not changed.
    """

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return super().sample_relative(OverBudgetShown(study), trial, search_space)


class OverBudgetShown:
    """A view of a study in which its over-budget draws (PRUNED, budget constraint > 0) are COMPLETE
    trials with the worst value each objective reached in the trials that trained; the rest is the study's.

    Private Optuna attribute (2 of 2): GPSampler.sample_relative reads the study's trials through the
    private `Study._get_trials` (it bypasses the public get_trials' cache rules); the view answers that
    call. tests/test_samplers.py::test_the_gp_sampler_still_reads_trials_through_the_private_get_trials
    fails if GPSampler stops calling it.
    """

    def __init__(self, study: optuna.Study) -> None:
        self.study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self.study, name)

    def _get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None, use_cache: bool = False
    ) -> list[FrozenTrial]:
        trials = self.study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        if states is not None and TrialState.COMPLETE not in states:
            return trials
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        pruned = self.study._get_trials(deepcopy=False, states=(TrialState.PRUNED,), use_cache=use_cache)
        over = [t for t in pruned if t.constraints.get(BUDGET_CONSTRAINT, 0.0) > 0]
        if not complete or not over:
            return trials
        columns = zip(*(t.values for t in complete), strict=True)  # each objective's values
        worst = [
            min(values) if direction == StudyDirection.MAXIMIZE else max(values)
            for direction, values in zip(self.study.directions, columns, strict=True)
        ]
        shown = []
        for trial in over:
            seen = copy.copy(trial)
            seen.state, seen.values = TrialState.COMPLETE, worst
            shown.append(seen)
        return sorted([*trials, *shown], key=lambda t: t.number)


def grid_choices(distribution: BaseDistribution, points: int) -> list[Any]:
    """The values a grid takes for one parameter: every choice, every integer of a short range,
    else `points` values spread evenly (geometrically for a log scale) from low to high."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, IntDistribution):
        every = list(range(distribution.low, distribution.high + 1, distribution.step))
        if len(every) <= points:
            return every
        spread = np.geomspace if distribution.log else np.linspace
        picked = spread(distribution.low, distribution.high, points)
        return sorted({min(every, key=lambda v: abs(v - x)) for x in picked})
    if isinstance(distribution, FloatDistribution) and distribution.step is not None:  # range(...) of floats
        step = distribution.step
        every = list(np.arange(distribution.low, distribution.high + step / 2, step))
        if len(every) > points:
            every = [every[round(i)] for i in np.linspace(0, len(every) - 1, points)]
        return [_short(value) for value in every]
    if isinstance(distribution, FloatDistribution):
        spread = np.geomspace if distribution.log else np.linspace
        if points == 1:
            return [_short(float(spread(distribution.low, distribution.high, 3)[1]))]
        return [_short(float(value)) for value in spread(distribution.low, distribution.high, points)]
    raise UserError(f"the grid sampler cannot split a {type(distribution).__name__}; use choice(...) or interval(...)")


def _short(value: float) -> float:
    return float(f"{value:.6g}")  # 0.0632456 rather than 0.06324555320336758 in overrides and tables


def search_space(overrides: list[str]) -> tuple[dict[str, BaseDistribution], dict[str, Any], list[str]]:
    """Distributions, fixed values and other overrides (`~key` deletions) of a sweep's parameter overrides
    (`interval(...)`, `tag(log, ...)`, `int(...)`, `choice(...)`, `range(...)`), parsed as
    hydra-optuna-sweeper parses them; a key given a fixed value later is not sampled."""
    # Private Hydra module: hydra-optuna-sweeper offers its override parser only in `_impl`.
    # tests/test_samplers.py::test_hydra_optuna_sweepers_parser_still_makes_the_distributions_we_sample fails
    # if it moves or changes what it returns.
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    distributions, fixed_params, fixed_overrides = create_params_from_overrides(overrides)
    for name in fixed_params:
        distributions.pop(name, None)
    return distributions, fixed_params, fixed_overrides


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


def trial_seed(seed: int, study_name: str, number: int) -> int:
    """A 32-bit seed for one trial of one study: different studies draw different points."""
    digest = hashlib.sha256(f"{seed}/{study_name}/{number}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def reseed(sampler: Any, seed: int | None, study_name: str, number: int) -> None:
    """Seed the sampler's random draws for trial `number` of `study_name`.

    A seeded sampler otherwise restarts its random sequence in every process: a resumed sweep
    would repeat its first trials, two workers started together would draw the same ones, and two
    studies with the same seed would draw the same points. Seeding per study and trial keeps a
    seeded sweep reproducible, its trials distinct, and different studies independent.
    """
    if seed is None:
        return
    value = trial_seed(seed, study_name, number)
    for name in RNG_ATTRIBUTES:
        state = getattr(sampler, name, None)
        if state is not None:
            state.rng.seed(value)
    for name in INNER_SAMPLERS:
        inner = getattr(sampler, name, None)
        if isinstance(inner, optuna.samplers.BaseSampler):
            reseed(inner, seed, study_name, number)


def motpe_removed(**settings: Any) -> None:
    """`hydra/sweeper/sampler=motpe`: refused before any trial (Optuna 4 removed MOTPESampler)."""
    raise UserError(
        "hydra/sweeper/sampler=motpe is gone: Optuna 4 removed MOTPE, and TPE (the default) now optimises "
        "several objectives itself; use hydra/sweeper/sampler=tpe"
    )


def check_objectives(sampler: Any, objectives: Sequence[str]) -> None:
    """Refuse a sampler that cannot optimise this many objectives, before any trial runs."""
    if len(objectives) > 1 and isinstance(sampler, optuna.samplers.CmaEsSampler):
        raise UserError(
            f"hydra/sweeper/sampler=cmaes optimises one objective, not objective={list(objectives)}; "
            "use tpe, nsgaii, nsgaiii, gp, random, qmc or grid for a multi-objective sweep"
        )
