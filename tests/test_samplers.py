"""Every sampler with every search space, seeded per study and trial; the grid over intervals."""

from __future__ import annotations

import warnings

import optuna
import pytest
from hydra.utils import instantiate
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from cnnsweep.errors import UserError
from cnnsweep.objectives import checked_directions
from cnnsweep.schema import CONF_DIR, compose_config
from cnnsweep.sweep.results import sweep_objectives
from cnnsweep.sweep.samplers import (
    INNER_SAMPLERS,
    RNG_ATTRIBUTES,
    GridSearch,
    check_objectives,
    grid_choices,
    reseed,
    search_space,
)
from cnnsweep.sweep.sweeper import configure_trial

SAMPLERS = ("tpe", "random", "gp", "qmc", "cmaes", "nsgaii", "nsgaiii", "grid")
LEARNING = ("tpe", "gp")  # samplers with startup trials before their own model: n_startup_trials=3 below
SEARCHES = {path.stem: [] for path in sorted((CONF_DIR / "hparams_search").glob("*.yaml"))}
SEARCHES |= {"fast": ["experiment=fast"], "tiny": ["experiment=tiny"], "minute": ["experiment=minute"]}  # recipes

optuna.logging.set_verbosity(optuna.logging.WARNING)


def draw(overrides: list[str], n_trials: int, study_name: str = "study") -> list[dict]:
    """The parameters the composed sweeper's sampler draws for n trials (an in-memory study, no training)."""
    cfg = compose_config(overrides, with_hydra=True)
    plugin = instantiate(cfg.hydra.sweeper, _recursive_=False, _execution_whitelist_="hydra_plugins.cnnsweep_sweeper.*")
    if plugin.refused:
        raise plugin.refused
    sweeper = plugin.sweeper
    sweeper.config = cfg
    objectives = sweep_objectives(cfg)
    distributions, fixed = sweeper._search_space([])
    check_objectives(sweeper.sampler, objectives)
    study = optuna.create_study(directions=checked_directions(objectives, sweeper.direction), sampler=sweeper.sampler)
    drawn = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # nsgaiii, qmc
        for number in range(n_trials):
            reseed(sweeper.sampler, sweeper.seed, study_name, number)
            trial = study.ask()
            configure_trial(trial, distributions, fixed, sweeper.fixed_overrides)
            study.tell(trial, [0.9 - 0.1 * (number % 3)] * len(objectives))
            drawn.append(dict(trial.params))
    return drawn


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("search", sorted(SEARCHES))
def test_every_sampler_draws_distinct_trials_for_every_search(search, sampler):
    overrides = [f"hparams_search={search}", f"hydra/sweeper/sampler={sampler}", *SEARCHES[search]]
    if search == "pareto" and sampler == "cmaes":
        with pytest.raises(UserError, match="sampler=cmaes optimises one objective"):
            draw(overrides, 1)
        return
    if sampler in LEARNING:
        overrides.append("hydra.sweeper.sampler.n_startup_trials=3")  # so the 6 draws reach the sampler's own model
    drawn = draw(overrides, 6)
    space = compose_config(overrides, with_hydra=True).hydra.sweeper.params
    assert all(set(params) == set(space) for params in drawn)
    assert len({tuple(sorted(params.items())) for params in drawn}) == 6, "a sampler repeated a trial"


def test_the_searches_leave_sampler_settings_to_the_sampler_option():
    for search in SEARCHES:
        sampler = compose_config([f"hparams_search={search}", *SEARCHES[search]], with_hydra=True).hydra.sweeper.sampler
        assert sampler._target_ == "optuna.samplers.TPESampler" and sampler.n_startup_trials == 10  # optuna's default
        text = (CONF_DIR / "hparams_search" / f"{search}.yaml").read_text()
        assert "n_startup_trials" not in text and "direction:" not in text, search


def test_the_default_tpe_is_multivariate_with_a_constant_liar_for_parallel_lanes():
    sampler = compose_config(["hparams_search=architecture"], with_hydra=True).hydra.sweeper.sampler
    assert (sampler.multivariate, sampler.constant_liar) == (True, True)
    made = instantiate(sampler, _execution_whitelist_="optuna.samplers.*")
    assert isinstance(made, optuna.samplers.TPESampler)


def test_motpe_is_refused_in_one_line_naming_tpe():
    with pytest.raises(
        UserError, match=r"sampler=motpe is gone: Optuna 4 removed MOTPE.*use hydra/sweeper/sampler=tpe"
    ):
        draw(["hparams_search=pareto", "hydra/sweeper/sampler=motpe"], 1)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_studies_draw_independently_and_each_reproducibly(sampler):
    overrides = ["hparams_search=lr_gamma_dropout", f"hydra/sweeper/sampler={sampler}"]
    first = draw(overrides, 4, study_name="one")
    assert draw(overrides, 4, study_name="one") == first, "the same study must draw the same trials"
    other = draw(overrides, 4, study_name="two")
    if sampler == "qmc":  # a low-discrepancy sequence (unscrambled): after a first random draw, the same points
        assert other[1:] == first[1:] and other[0] != first[0] and len({tuple(p.items()) for p in first}) == 4
    elif sampler == "grid":  # trial N is point N of the grid shuffled by the sampler's seed, in every study
        assert other == first and len({tuple(p.items()) for p in first}) == 4
    else:
        assert not {tuple(p.items()) for p in other} & {tuple(p.items()) for p in first}


def test_the_samplers_keep_the_private_random_state_reseed_replaces():
    """reseed() seeds Optuna's private random states (samplers.RNG_ATTRIBUTES, INNER_SAMPLERS): this fails
    if Optuna renames them or stops keeping a LazyRandomState there."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        made = {
            "tpe": optuna.samplers.TPESampler(seed=0),
            "random": optuna.samplers.RandomSampler(seed=0),
            "gp": optuna.samplers.GPSampler(seed=0),
            "qmc": optuna.samplers.QMCSampler(seed=0),
            "cmaes": optuna.samplers.CmaEsSampler(seed=0),
            "nsgaii": optuna.samplers.NSGAIISampler(seed=0),
            "nsgaiii": optuna.samplers.NSGAIIISampler(seed=0),
            "grid": optuna.samplers.GridSampler({"x": [1, 2]}, seed=0),
        }
    for name, sampler in made.items():
        own = [attribute for attribute in RNG_ATTRIBUTES if hasattr(sampler, attribute)]
        inner = [getattr(sampler, attribute) for attribute in INNER_SAMPLERS if hasattr(sampler, attribute)]
        assert own or inner, f"{name}: no random state where reseed() looks"
        states = [getattr(sampler, attribute) for attribute in own] + [
            getattr(sampler_inside, attribute)
            for sampler_inside in inner
            for attribute in RNG_ATTRIBUTES
            if hasattr(sampler_inside, attribute)
        ]
        assert states, f"{name}: neither it nor the sampler it delegates to has a random state"
        before = [state.rng.get_state()[1].copy() for state in states]
        reseed(sampler, 0, "study", 7)
        after = [state.rng.get_state()[1] for state in states]
        assert all((b != a).any() for b, a in zip(before, after, strict=True)), name
    assert hasattr(made["cmaes"], "_cma_rng"), "CMA-ES seeds each trial's draw from _cma_rng"


def test_hydra_optuna_sweepers_parser_still_makes_the_distributions_we_sample():
    """samplers.search_space calls hydra-optuna-sweeper's private `_impl.create_params_from_overrides`:
    this fails if it moves or changes what it returns."""
    overrides = ["a=tag(log, interval(0.01, 0.1))", "b=int(interval(4, 12))", "c=choice(x,y)", "d=3", "~e", "c=x"]
    distributions, fixed, other = search_space(overrides)
    assert distributions == {
        "a": FloatDistribution(0.01, 0.1, log=True),
        "b": IntDistribution(4, 12),
    }
    assert fixed == {"d": "3", "c": "x"} and other == ["~e"]
    assert search_space(["c=choice(x,y)"])[0]["c"] == CategoricalDistribution(["x", "y"])


def test_the_grid_splits_intervals_and_keeps_choices():
    assert grid_choices(FloatDistribution(0.0, 0.2), 3) == [0.0, 0.1, 0.2]
    assert grid_choices(FloatDistribution(0.001, 0.1, log=True), 3) == [0.001, 0.01, 0.1]
    assert grid_choices(FloatDistribution(0.0, 1.0, step=0.25), 3) == [0.0, 0.5, 1.0]
    assert grid_choices(IntDistribution(4, 16), 3) == [4, 10, 16]
    assert grid_choices(IntDistribution(1, 3), 5) == [1, 2, 3]
    assert grid_choices(IntDistribution(1, 100, log=True), 3) == [1, 10, 100]
    grid = GridSearch({"a": FloatDistribution(0, 1), "b": IntDistribution(8, 24)}, interval_points=4)
    assert grid.n_points == 16
    with pytest.raises(UserError, match="interval_points=0 must be at least 1"):
        GridSearch({}, interval_points=0)
