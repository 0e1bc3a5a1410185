"""`cnnsweep noise_sim`: the simulated world matches its docstring, and the strategies compare as the full run shows.

The statistical asserts run small seeded simulations (30 runs per sweep, tens of sweeps) and hold for each of
the simulation seeds 0-11 (checked when they were written); each margin is several standard errors wide.
"""

import math
import re
import statistics
import subprocess
import sys

import numpy as np
import pytest

from cnnsweep.artifacts import read_csv
from cnnsweep.sweep.noise import paired_difference
from cnnsweep.sweep.samplers import search_space
from cnnsweep.tools.noise_sim import (
    SEARCH_FILE,
    Landscape,
    Noise,
    World,
    choose,
    main,
    outcome,
    plans,
    search_params,
    simulate,
    tpe_sampler,
)

from helpers import REPO

SEED = 0  # the simulation's seed; 1-11 pass as well (checked)


def landscape() -> Landscape:
    distributions, _, _ = search_space(search_params(SEARCH_FILE))
    return Landscape(distributions)


@pytest.fixture(scope="module")
def tpe_sweeps():
    """40 sweeps of 30 runs with cnnsweep's TPE: each strategy's outcomes, sweep by sweep."""
    return simulate(40, 30, seed=SEED, samplers=("tpe",), names=("repeats", "confirm"))


@pytest.fixture(scope="module")
def random_sweeps():
    """120 sweeps of 30 runs with the random sampler (cheap): enough sweeps to measure coverage."""
    return simulate(120, 30, seed=SEED, samplers=("random",), names=("confirm", "confirm_splits"))


def mean_and_se(values):
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def paired(results, metric, strategy, baseline):
    """The interval of strategy's metric minus baseline's, sweep by sweep (the sweeps share their worlds)."""
    return paired_difference(
        {i: o[metric] for i, o in enumerate(results[strategy])}, {i: o[metric] for i, o in enumerate(results[baseline])}
    )


def test_the_landscape_has_a_broad_flat_top_fitted_to_the_projects_sweep():
    world = landscape()
    assert world.best == pytest.approx(99.45)
    assert world.truth({"optimizer.lr": 0.2, "scheduler.gamma": 0.5, "model.dropout": 0.2}) >= 98.85
    unit = np.random.default_rng(0).random((4000, 3))
    names = list(world.distributions)
    lows_highs = [(world.distributions[n].low, world.distributions[n].high, world.distributions[n].log) for n in names]
    values = []
    for point in unit:
        params = {
            name: (low * (high / low) ** u if log else low + (high - low) * u)
            for name, (low, high, log), u in zip(names, lows_highs, point, strict=True)
        }
        values.append(world.truth(params))
    within = statistics.fmean(v >= world.best - 0.1 for v in values)
    assert 0.2 < within < 0.35  # "a quarter of the space lies within 0.1 point of the top"
    # The fit the docstring names: the test accuracies of the 10 finished trials of the project's sweep
    trials = read_csv(REPO / "results" / "sweeps" / "lr_gamma_dropout.trials.csv")
    done = [row for row in trials if row["state"] == "COMPLETE"]
    residuals = [100 * row["test_acc"] - world.truth({n: row[n] for n in names}) for row in done]
    assert len(done) == 10
    assert statistics.stdev(residuals) < 0.07


def test_a_world_without_noise_chooses_the_best_configuration_searched_and_reports_it_exactly():
    quiet = Noise(val_seed_sd=0, test_seed_sd=0, val_split_sd=0, test_split_sd=0)
    world = World(landscape(), quiet, seed=1)
    for plan in plans(24, 3, 2, 3):
        winner, searched_best = choose(world, tpe_sampler(1), 1, plan, np.random.default_rng(1))
        result = outcome(world, winner, searched_best)
        assert result["regret"] == pytest.approx(result["search_regret"])
        assert result["curse"] == pytest.approx(0) and result["test_minus_truth"] == pytest.approx(0)
        assert len(winner.vals) == (plan.seeds or plan.repeats)


def test_the_sampler_is_cnnsweeps_tpe():
    sampler = tpe_sampler(7)
    assert sampler._multivariate and sampler._constant_liar  # what TPEConf turns on over hydra-optuna-sweeper's
    assert sampler._n_startup_trials == 10


def test_repeats_spend_the_same_runs_on_fewer_trials_and_confirmation_keeps_most_for_the_search():
    strategies = plans(60, 3, 3, 5)
    assert [(plan.name, plan.trials) for plan in strategies] == [
        ("single", 60), ("repeats", 20), ("confirm", 45), ("repeats_splits", 20), ("confirm_splits", 45)
    ]  # fmt: skip
    assert {plan.runs for plan in strategies} == {60}
    assert strategies[3].repeat_splits == [0, 1, 2] and strategies[1].repeat_splits == [0, 0, 0]
    assert strategies[4].confirm_splits == [1, 2, 3, 4, 5]  # splits the search (on split 0) never validated on


def test_single_seed_pick_the_best_reports_an_optimistic_figure(tpe_sweeps):
    curse, se = mean_and_se([o["curse"] for o in tpe_sweeps["tpe", "single"]])
    assert curse > 0.1 and curse > 5 * se  # the best of 30 noisy draws, against the true accuracy
    seed_part, seed_se = mean_and_se([o["curse_seed"] for o in tpe_sweeps["tpe", "single"]])
    assert seed_part > 3 * seed_se  # ... and against the split's truth: the seed noise alone is optimistic too


def test_repeats_and_confirmation_remove_the_seed_part_of_the_curse_not_the_splits(tpe_sweeps):
    for strategy in ("repeats", "confirm"):
        less = paired(tpe_sweeps, "curse_seed", ("tpe", "single"), ("tpe", strategy))
        assert less.low > 0  # single's seed part is larger, beyond the interval of the paired difference
        curse, se = mean_and_se([o["curse"] for o in tpe_sweeps["tpe", strategy]])
        assert curse > 0.05 and curse > 4 * se  # the validation split's part remains
        # The test figure (never used to choose) carries no curse: within 3 standard errors of the truth
        test, test_se = mean_and_se([o["test_minus_truth"] for o in tpe_sweeps["tpe", strategy]])
        assert abs(test) < 3 * test_se + 0.01


def test_at_equal_runs_on_a_flat_top_repeats_choose_worse_and_confirmation_as_well_as_single_seeds(tpe_sweeps):
    """The ordering the full run shows (docs/noise.md): repeats search a third as many
    configurations, and the split's deviation, which no repeat averages away, decides the choice as much
    as the seed noise does; confirming the top 3 costs little search and chooses as well as single seeds."""
    fewer = paired(tpe_sweeps, "search_regret", ("tpe", "repeats"), ("tpe", "single"))
    assert fewer.low > 0  # 10 configurations come less close to the top than 30
    worse = paired(tpe_sweeps, "regret", ("tpe", "repeats"), ("tpe", "single"))
    assert worse.mean > 0
    same = paired(tpe_sweeps, "regret", ("tpe", "confirm"), ("tpe", "single"))
    assert same.high > 0 and abs(same.mean) < 0.02  # not measurably better, and within 0.02 point


def test_confirmations_interval_covers_the_splits_truth_near_95_percent_not_the_true_accuracy(random_sweeps):
    """Against f + d (the mean over infinitely many seeds on the same validation split): the best of the top 3
    is chosen on the same fresh seeds, so coverage is a little under 95% at most; against f it is far less."""
    covers_split = statistics.fmean(o["covers_val_truth"] for o in random_sweeps["random", "confirm"])
    assert 0.88 <= covers_split <= 0.99  # 120 sweeps: 95% has a standard error of 2 points
    covers_truth = statistics.fmean(o["covers_truth"] for o in random_sweeps["random", "confirm"])
    assert covers_truth < 0.6
    test_covers = statistics.fmean(o["test_covers_test_truth"] for o in random_sweeps["random", "confirm"])
    assert 0.88 <= test_covers <= 0.995
    assert all(o["covers_val_truth"] is None for o in random_sweeps["random", "single"])  # one draw: n/a


def test_the_command_writes_the_table(tmp_path):
    command = [sys.executable, "-m", "cnnsweep", "noise_sim", "--sweeps", "3", "--runs", "12", "--repeats", "2"]
    command += ["--top", "2", "--confirm-seeds", "2", "--samplers", "random", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    rows = read_csv(tmp_path / "noise_sim.csv")
    assert [(r["sampler"], r["strategy"], r["runs"]) for r in rows] == [
        ("random", "single", 12),
        ("random", "repeats", 12),
        ("random", "confirm", 12),
        ("random", "repeats_splits", 12),
        ("random", "confirm_splits", 12),
    ]
    assert rows[0]["regret_mean"] >= rows[0]["search_regret_mean"] >= 0
    assert (tmp_path / "noise_sim.png").read_bytes().startswith(b"\x89PNG")
    assert re.search(r"^\| random +\| confirm +\| 8 x 1 \+ 2 x 2 ", done.stdout, re.MULTILINE)


def test_the_command_refuses_a_budget_that_cannot_hold_the_strategies(tmp_path, capsys):
    assert main(["--runs", "10", "--out", str(tmp_path)]) == 2
    assert "--runs 10 cannot hold --repeats 3 or --top 3 x --confirm-seeds 5" in capsys.readouterr().err
    assert not (tmp_path / "noise_sim.csv").exists()


def test_confirmation_on_fresh_splits_removes_the_whole_curse_and_its_interval_covers_the_true_accuracy(random_sweeps):
    """Each confirmation run validated on a split the search never saw: the split's deviation is then noise
    the interval measures, not a bias the choice selected for."""
    same_split, _ = mean_and_se([o["curse"] for o in random_sweeps["random", "confirm"]])
    curse, se = mean_and_se([o["curse"] for o in random_sweeps["random", "confirm_splits"]])
    assert curse < same_split - 0.03 and curse < 3 * se + 0.03  # what remains is the best of 3 confirmed means
    covers_truth = statistics.fmean(o["covers_truth"] for o in random_sweeps["random", "confirm_splits"])
    assert 0.85 <= covers_truth <= 0.995
    # ... and it chooses better: the split the search chose on no longer decides among the top 3
    better = paired(random_sweeps, "regret", ("random", "confirm_splits"), ("random", "confirm"))
    assert better.mean < -0.005 and better.high < 0.005
