"""Every sampler with every search space, seeded per study and trial; the grid over intervals."""

from __future__ import annotations

import warnings

import optuna
import pytest
from hydra.utils import instantiate
from optuna.distributions import IntUniformDistribution, LogUniformDistribution, UniformDistribution

from cnnsweep.errors import UserError
from cnnsweep.objectives import checked_directions
from cnnsweep.results import sweep_objectives
from cnnsweep.samplers import INNER_SAMPLERS, RNG_ATTRIBUTES, GridSearch, check_objectives, grid_choices, reseed
from cnnsweep.schema import CONF_DIR, compose_config

SAMPLERS = ("tpe", "random", "cmaes", "nsgaii", "motpe", "grid")
SEARCHES = {path.stem: [] for path in sorted((CONF_DIR / "hparams_search").glob("*.yaml"))}
SEARCHES |= {"fast": ["experiment=fast"], "tiny": ["experiment=tiny"]}  # their spaces are of those recipes

optuna.logging.set_verbosity(optuna.logging.WARNING)


def draw(overrides: list[str], n_trials: int, study_name: str = "study") -> list[dict]:
    """The parameters the composed sweeper's sampler draws for n trials (an in-memory study, no training)."""
    cfg = compose_config(overrides, with_hydra=True)
    sweeper = instantiate(cfg.hydra.sweeper).sweeper
    sweeper.config = cfg
    objectives = sweep_objectives(cfg)
    distributions, fixed = sweeper._search_space([])
    check_objectives(sweeper.sampler, objectives)
    study = optuna.create_study(directions=checked_directions(objectives, sweeper.direction), sampler=sweeper.sampler)
    drawn = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # motpe, nsgaii
        for number in range(n_trials):
            reseed(sweeper.sampler, sweeper.seed, study_name, number)
            trial = study.ask()
            sweeper._configure_trials([trial], distributions, fixed)
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
    if sampler in ("tpe", "motpe"):
        overrides.append("hydra.sweeper.sampler.n_startup_trials=3")  # so the 6 draws reach TPE's own model
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


@pytest.mark.parametrize("sampler", ("tpe", "random", "cmaes", "nsgaii", "motpe", "grid"))
def test_studies_draw_independently_and_each_reproducibly(sampler):
    overrides = ["hparams_search=lr_gamma_dropout", f"hydra/sweeper/sampler={sampler}"]
    first = draw(overrides, 4, study_name="one")
    assert draw(overrides, 4, study_name="one") == first, "the same study must draw the same trials"
    other = draw(overrides, 4, study_name="two")
    if sampler == "grid":  # the same points of the grid, in another order
        assert other != first
    else:
        assert not {tuple(p.items()) for p in other} & {tuple(p.items()) for p in first}


def test_the_samplers_keep_the_private_random_state_reseed_replaces():
    """reseed() sets optuna 2.10's private RandomState attributes: this fails if optuna renames them."""
    made = {
        "tpe": optuna.samplers.TPESampler(seed=0),
        "random": optuna.samplers.RandomSampler(seed=0),
        "cmaes": optuna.samplers.CmaEsSampler(seed=0),
        "nsgaii": optuna.samplers.NSGAIISampler(seed=0),
        "motpe": optuna.samplers.MOTPESampler(seed=0),
    }
    for name, sampler in made.items():
        own = [attribute for attribute in RNG_ATTRIBUTES if hasattr(sampler, attribute)]
        inner = [attribute for attribute in INNER_SAMPLERS if hasattr(sampler, attribute)]
        assert own or inner, f"{name}: no random state where reseed() looks"
        before = [getattr(sampler, attribute).get_state()[1].copy() for attribute in own]
        reseed(sampler, 0, "study", 7)
        after = [getattr(sampler, attribute).get_state()[1] for attribute in own]
        assert all((b != a).any() for b, a in zip(before, after, strict=True)), name
    assert hasattr(made["cmaes"], "_cma_rng"), "CMA-ES seeds each trial's draw from _cma_rng"


def test_the_grid_splits_intervals_and_keeps_choices():
    assert grid_choices(UniformDistribution(0.0, 0.2), 3) == [0.0, 0.1, 0.2]
    assert grid_choices(LogUniformDistribution(0.001, 0.1), 3) == [0.001, 0.01, 0.1]
    assert grid_choices(IntUniformDistribution(4, 16), 3) == [4, 10, 16]
    assert grid_choices(IntUniformDistribution(1, 3), 5) == [1, 2, 3]
    grid = GridSearch({"a": UniformDistribution(0, 1), "b": IntUniformDistribution(8, 24)}, interval_points=4)
    assert grid.n_points == 16
    with pytest.raises(UserError, match="interval_points=0 must be at least 1"):
        GridSearch({}, interval_points=0)
