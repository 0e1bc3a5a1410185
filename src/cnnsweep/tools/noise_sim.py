"""Which strategy chooses better when the true differences are smaller than one run's noise: a simulation.

    cnnsweep noise_sim [--sweeps S] [--runs B] [--seed X] [--out DIR]

Many simulated sweeps over the search space of conf/hparams_search/lr_gamma_dropout.yaml (learning rate,
StepLR's gamma, dropout), each spending the same B training runs in each of these ways:

- single:  B trials on one seed each; the winner is the best single value (what a sweep did before repeats).
- repeats: B/K trials, each the mean of K seeds (`hydra.sweeper.repeats=K`); the winner is the best mean.
- confirm: B - N*M single-seed trials, then the top N on M fresh seeds (`cnnsweep confirm`); the
           winner is the best confirmed mean.
- repeats_splits, confirm_splits: the same, but each repeat (each confirmation run) is validated on a
           validation split of its own (as if `data.split_seed` changed with the seed), which neither
           `hydra.sweeper.repeats` nor `cnnsweep confirm` does: what varying the split would buy.

The samplers are Optuna's own, driven through ask/tell as the sweeper drives them: cnnsweep's TPE (its
TPEConf: multivariate, constant_liar, seeded and reseeded per trial as sweep/claims.py does), each trial
drawn by sweep/samplers.configure_trial from the distributions sweep/samplers.search_space reads from the
YAML, and the sampler is told the noisy value a sweep would tell it. A random sampler row is the baseline.

The world (all figures in accuracy points, %):

- True accuracy f: a smooth bowl with a broad flat top, 99.45 at lr 0.06, gamma 0.2, dropout 0.02, falling
  as r^4 / (1 + r^4) (flat near the top, saturating far away) by at most 0.6 point (floor 98.85), where r is
  the distance from the top in the unit cube of the search space (lr on its log scale) scaled by widths
  0.6 (lr), 1.2 (gamma), 0.6 (dropout). A quarter of the space lies within 0.1 point of the top.
  Why these numbers: the widths and the depth are the best least-squares fit, on a coarse grid, to the test
  accuracies of the 10 trials that finished in results/sweeps/lr_gamma_dropout.trials.csv (residual sd
  0.060 point, no more than the test set's own noise below); the top sits by the best of those trials and
  the search's pick, trial 15 (lr 0.0621, gamma 0.188, dropout 0.038), at its measured 99.45 +- 0.03 (3 seeds).
- A run's seed noise: independent normal draws, sd 0.04 on the 5,000-image validation split and 0.03 on the
  10,000-image test set. README's recipes measure 0.01-0.05 (typically 0.03) on the test set; a run's seed
  changes which images it gets wrong, and on half as many images that spread is sqrt(2) larger. A seed is
  independent of the configuration here: a different learning rate sends the same seed down another path.
- The validation split's own deviation: the split is the same for every trial and seed (data.split_seed),
  so each configuration's mean over infinitely many seeds still differs from its true accuracy by d(c).
  One run on 5,000 images at 99.4% has a binomial sd of 0.11 point, of which the seed part is 0.04, leaving
  sd 0.10 for d. Of its variance a share 0.25 is common to all configurations (the split's hard images are
  hard for every network near the top: that part moves all values together and never changes the choice)
  and the rest a smooth random field over the configurations (length scale 0.1 of each range: neighbours
  share it). The share is the fit to the same 10 trials: their validation-minus-test differences have sd
  0.119 point; this model gives 0.117. The test set has its own independent deviation the same way, sd 0.07
  (binomial 0.077 on 10,000 images less the seed part). Repeats and confirmation on the same split average
  the seed noise away, never d: their intervals are about the split's truth f + d, not about f.

Each simulated sweep draws a new split (d for validation and test) and new seeds; the strategies of a
sweep share its split and sampler seed, so their differences are paired. Reported per strategy, with its mean
and standard error over the sweeps: regret (99.45 minus the winner's f), the winner's curse (the validation
figure reported for the winner minus its f, and minus its split truth f + d: the seed part alone), how often
the 95% Student-t interval of the winner's seeds (cnnsweep.sweep.noise.mean_interval) covers f + d and f, and
the same for the winner's test figure (reported, never used to choose) against its test-set truth. A single
run has no interval: its coverage is n/a. Pruning, failures and parallel lanes are left out.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution, FloatDistribution

from cnnsweep.artifacts import write_csv
from cnnsweep.errors import UserError
from cnnsweep.schema import CONF_DIR
from cnnsweep.sweep.noise import Interval, mean_interval, paired_difference
from cnnsweep.sweep.plugin_facts import TPEConf
from cnnsweep.sweep.samplers import configure_trial, reseed, search_space

SEARCH_FILE = CONF_DIR / "hparams_search" / "lr_gamma_dropout.yaml"
TABLE_FILE = "noise_sim.csv"
PLOT_FILE = "noise_sim.png"
STUDY_NAME = "noise_sim"  # the name the sampler is reseeded with, as a sweep's study name
STRATEGIES = ("single", "repeats", "confirm", "repeats_splits", "confirm_splits")
SAMPLERS = ("tpe", "random")


@dataclass(frozen=True)
class Landscape:
    """The true accuracy (points) of each configuration: a flat-topped bowl (see the module docstring)."""

    distributions: dict[str, BaseDistribution]
    peak: float = 99.45
    depth: float = 0.6
    center: dict[str, float] = field(
        default_factory=lambda: {"optimizer.lr": 0.06, "scheduler.gamma": 0.2, "model.dropout": 0.02}
    )
    widths: dict[str, float] = field(
        default_factory=lambda: {"optimizer.lr": 0.6, "scheduler.gamma": 1.2, "model.dropout": 0.6}
    )

    def unit(self, params: dict[str, float]) -> np.ndarray:
        """The configuration in the unit cube of the search space (a log scale where the YAML says log)."""
        return np.array([unit_value(self.distributions[name], params[name]) for name in self.distributions])

    def truth(self, params: dict[str, float]) -> float:
        center = self.unit(self.center)
        widths = np.array([self.widths[name] for name in self.distributions])
        r4 = float((((self.unit(params) - center) / widths) ** 2).sum()) ** 2
        return self.peak - self.depth * r4 / (1 + r4)

    @property
    def best(self) -> float:
        """The best true accuracy in the space (the top lies inside it)."""
        return self.truth(self.center)


def unit_value(distribution: BaseDistribution, value: float) -> float:
    if not isinstance(distribution, FloatDistribution):
        raise UserError(f"the simulation draws intervals only, not a {type(distribution).__name__}")
    scale = math.log if distribution.log else float
    return (scale(value) - scale(distribution.low)) / (scale(distribution.high) - scale(distribution.low))


@dataclass(frozen=True)
class Noise:
    """The sizes of the noise a run's figures carry, in points (justified in the module docstring)."""

    val_seed_sd: float = 0.04
    test_seed_sd: float = 0.03
    val_split_sd: float = 0.10
    test_split_sd: float = 0.07
    split_shared: float = 0.25  # share of a split's variance common to all configurations
    split_length: float = 0.1  # length scale of the configuration-specific part, in units of each range


class SplitDeviation:
    """One data split's deviation d(c) of a configuration's seed-mean from its true accuracy.

    A shared offset plus a smooth Gaussian random field (random Fourier features of an RBF kernel, so any
    configuration the sampler draws gets its value without a grid).
    """

    FEATURES = 256

    def __init__(self, sd: float, shared: float, length: float, dims: int, rng: np.random.Generator) -> None:
        self.shared = sd * math.sqrt(shared) * rng.standard_normal()
        self.own_sd = sd * math.sqrt(1 - shared)
        self.frequencies = rng.standard_normal((self.FEATURES, dims)) / length
        self.phases = rng.uniform(0, 2 * math.pi, self.FEATURES)
        self.weights = rng.standard_normal(self.FEATURES) * math.sqrt(2 / self.FEATURES)

    def __call__(self, unit: np.ndarray) -> float:
        field_value = float(self.weights @ np.cos(self.frequencies @ unit + self.phases))
        return self.shared + self.own_sd * field_value


class World:
    """One simulated sweep's data: the true landscape, this split's validation and test deviations, seeds."""

    def __init__(self, landscape: Landscape, noise: Noise, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.landscape, self.noise, self.seed = landscape, noise, seed
        self.dims = len(landscape.distributions)
        self.val_splits = {
            0: SplitDeviation(noise.val_split_sd, noise.split_shared, noise.split_length, self.dims, rng)
        }
        self.test_split = SplitDeviation(noise.test_split_sd, noise.split_shared, noise.split_length, self.dims, rng)

    def val_split(self, split: int) -> SplitDeviation:
        """Validation split number `split`: 0 is the sweep's (data.split_seed), any other a fresh one,
        independent of it (other images held out)."""
        if split not in self.val_splits:
            rng = np.random.default_rng([self.seed, split])
            noise = self.noise
            self.val_splits[split] = SplitDeviation(
                noise.val_split_sd, noise.split_shared, noise.split_length, self.dims, rng
            )
        return self.val_splits[split]

    def truth(self, params: dict[str, float]) -> float:
        return self.landscape.truth(params)

    def val_truth(self, params: dict[str, float], split: int = 0) -> float:
        """The mean over infinitely many seeds on validation split `split`: what repeats on it converge to."""
        return self.truth(params) + self.val_split(split)(self.landscape.unit(params))

    def test_truth(self, params: dict[str, float]) -> float:
        return self.truth(params) + self.test_split(self.landscape.unit(params))

    def run(self, params: dict[str, float], split: int, rng: np.random.Generator) -> tuple[float, float]:
        """One training run on one seed, validated on split `split`: its (validation, test) accuracy."""
        val = self.val_truth(params, split) + self.noise.val_seed_sd * rng.standard_normal()
        test = self.test_truth(params) + self.noise.test_seed_sd * rng.standard_normal()
        return val, test


@dataclass
class Candidate:
    """A configuration with the runs it trained: their validation splits, validation and test accuracies."""

    params: dict[str, float]
    splits: list[int] = field(default_factory=list)
    vals: list[float] = field(default_factory=list)
    tests: list[float] = field(default_factory=list)

    def train(self, world: World, splits: Sequence[int], rng: np.random.Generator) -> None:
        """One run (on a new seed) for each entry of `splits`, validated on that split."""
        for split in splits:
            val, test = world.run(self.params, split, rng)
            self.splits.append(split)
            self.vals.append(val)
            self.tests.append(test)

    def val_truth(self, world: World) -> float:
        """What the mean of its validation figures converges to over seeds: f + the mean d of its splits."""
        return statistics.fmean(world.val_truth(self.params, split) for split in self.splits)

    @property
    def value(self) -> float:
        return statistics.fmean(self.vals)


@dataclass(frozen=True)
class Plan:
    """How a strategy spends its runs: trials x repeats, then the top `top` confirmed on `seeds` fresh seeds;
    with `fresh_splits`, each repeat (each confirmation run) is validated on a split of its own."""

    name: str
    trials: int
    repeats: int = 1
    top: int = 0
    seeds: int = 0
    fresh_splits: bool = False

    @property
    def runs(self) -> int:
        return self.trials * self.repeats + self.top * self.seeds

    @property
    def repeat_splits(self) -> list[int]:
        """Each repeat's split: the sweep's for all, or splits 0..K-1 (the same K for every trial)."""
        return list(range(self.repeats)) if self.fresh_splits else [0] * self.repeats

    @property
    def confirm_splits(self) -> list[int]:
        """Each confirmation run's split: the sweep's, or fresh ones the search never validated on."""
        return list(range(1, self.seeds + 1)) if self.fresh_splits else [0] * self.seeds


def plans(runs: int, repeats: int, top: int, seeds: int) -> list[Plan]:
    """The strategies at `runs` runs each, in STRATEGIES' order (repeats' trials round down: they may spend a
    few runs less)."""
    if runs < repeats or runs - top * seeds < top or min(repeats, top, seeds) < 1:
        raise UserError(
            f"--runs {runs} cannot hold --repeats {repeats} or --top {top} x --confirm-seeds {seeds} "
            f"plus {top} trials to confirm: give more runs or fewer repeats/seeds"
        )
    return [
        Plan("single", runs),
        Plan("repeats", runs // repeats, repeats=repeats),
        Plan("confirm", runs - top * seeds, top=top, seeds=seeds),
        Plan("repeats_splits", runs // repeats, repeats=repeats, fresh_splits=True),
        Plan("confirm_splits", runs - top * seeds, top=top, seeds=seeds, fresh_splits=True),
    ]


def tpe_sampler(seed: int) -> optuna.samplers.BaseSampler:
    """Optuna's TPESampler with the settings of cnnsweep's `hydra/sweeper/sampler=tpe` (its TPEConf)."""
    settings = {f.name: getattr(TPEConf, f.name, None) for f in fields(TPEConf) if f.name != "_target_"}
    settings = {name: value for name, value in settings.items() if value is not None}
    return optuna.samplers.TPESampler(**{**settings, "seed": seed})


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return tpe_sampler(seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserError(f"--samplers: unknown sampler {name!r}; use {', '.join(SAMPLERS)}")


def search(
    world: World, sampler: optuna.samplers.BaseSampler, seed: int, plan: Plan, rng: np.random.Generator
) -> list[Candidate]:
    """The plan's trials, asked of the sampler one at a time and told the mean of their repeats."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    distributions = world.landscape.distributions
    candidates = []
    for number in range(plan.trials):
        reseed(sampler, seed, STUDY_NAME, number)  # as TrialClaims.next_trial: before ask and after
        trial = study.ask()
        reseed(sampler, seed, STUDY_NAME, trial.number)
        configure_trial(trial, distributions, {}, [])
        candidate = Candidate(dict(trial.params))
        candidate.train(world, plan.repeat_splits, rng)
        study.tell(trial, candidate.value)
        candidates.append(candidate)
    return candidates


def choose(
    world: World, sampler: optuna.samplers.BaseSampler, seed: int, plan: Plan, rng: np.random.Generator
) -> tuple[Candidate, float]:
    """The plan's winner (the best of the search, or the best of its top `plan.top` retrained on fresh
    seeds) and the best true accuracy among the configurations the search trained."""
    candidates = search(world, sampler, seed, plan, rng)
    searched_best = max(world.truth(c.params) for c in candidates)
    if plan.top:
        top = sorted(candidates, key=lambda c: c.value, reverse=True)[: plan.top]
        candidates = [Candidate(c.params) for c in top]  # the search's runs are left out of the confirmed figure
        for candidate in candidates:
            candidate.train(world, plan.confirm_splits, rng)
    return max(candidates, key=lambda c: c.value), searched_best


METRICS = (
    "regret",
    "search_regret",
    "curse",
    "curse_seed",
    "covers_val_truth",
    "covers_truth",
    "test_minus_truth",
    "test_covers_test_truth",
)


def outcome(world: World, winner: Candidate, searched_best: float) -> dict[str, float | None]:
    """What one sweep's choice came to, against the truths (coverage 1/0, None where there is no interval)."""
    truth, val_truth, test_truth = world.truth(winner.params), winner.val_truth(world), world.test_truth(winner.params)
    val, test = mean_interval(winner.vals), mean_interval(winner.tests)

    def covers(interval: Interval, value: float) -> float | None:
        return None if interval.n < 2 else float(interval.contains(value))

    return {
        "regret": world.landscape.best - truth,
        "search_regret": world.landscape.best - searched_best,  # the regret of a choice made without noise
        "curse": val.mean - truth,
        "curse_seed": val.mean - val_truth,
        "covers_val_truth": covers(val, val_truth),
        "covers_truth": covers(val, truth),
        "test_minus_truth": test.mean - truth,
        "test_covers_test_truth": covers(test, test_truth),
    }


def simulate(
    sweeps: int,
    runs: int,
    seed: int = 0,
    repeats: int = 3,
    top: int = 3,
    confirm_seeds: int = 5,
    samplers: Sequence[str] = SAMPLERS,
    noise: Noise = Noise(),
    progress: Callable[[int], None] | None = None,
    names: Sequence[str] = STRATEGIES,
) -> dict[tuple[str, str], list[dict[str, float | None]]]:
    """Each (sampler, strategy)'s outcome in each of `sweeps` simulated sweeps (same worlds for all):
    the strategies named in `names` (single-seed search always, the baseline of the paired regret)."""
    distributions, _, _ = search_space(search_params(SEARCH_FILE))
    landscape = Landscape(distributions)
    strategies = [plan for plan in plans(runs, repeats, top, confirm_seeds) if plan.name in {"single", *names}]
    results: dict[tuple[str, str], list[dict[str, float | None]]] = {
        (sampler, plan.name): [] for sampler in samplers for plan in strategies
    }
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for index in range(sweeps):
            world_seed = seed * 1_000_003 + index
            world = World(landscape, noise, world_seed)
            for sampler_name in samplers:
                for plan in strategies:
                    streams = [world_seed, STRATEGIES.index(plan.name), SAMPLERS.index(sampler_name)]
                    rng = np.random.default_rng(streams)  # the run noise of this strategy and sampler
                    sampler = make_sampler(sampler_name, world_seed)
                    winner, searched_best = choose(world, sampler, world_seed, plan, rng)
                    results[sampler_name, plan.name].append(outcome(world, winner, searched_best))
            if progress:
                progress(index + 1)
    return results


def search_params(path: Path) -> list[str]:
    """The `hydra.sweeper.params` of a search's YAML, as `name=expression` overrides."""
    params = OmegaConf.load(path).hydra.sweeper.params
    return [f"{name}={expression}" for name, expression in params.items()]


def mean_se(values: Sequence[float | None]) -> tuple[float, float, int]:
    """The mean of the values that exist, its standard error, and how many there were (NaN when none)."""
    present = [value for value in values if value is not None]
    if not present:
        return math.nan, math.nan, 0
    if len(present) == 1:
        return present[0], math.nan, 1
    return statistics.fmean(present), statistics.stdev(present) / math.sqrt(len(present)), len(present)


def table(
    results: dict[tuple[str, str], list[dict[str, float | None]]], strategies: Sequence[Plan]
) -> list[dict[str, Any]]:
    """One row per (sampler, strategy): each metric's mean and standard error, and the regret's paired
    difference from single-seed search with the same sampler (its 95% interval over the sweeps)."""
    by_name = {plan.name: plan for plan in strategies}
    rows = []
    for (sampler, name), outcomes in results.items():
        plan = by_name[name]
        row: dict[str, Any] = {"sampler": sampler, "strategy": name, "trials": plan.trials, "repeats": plan.repeats}
        row |= {"top": plan.top, "confirm_seeds": plan.seeds, "runs": plan.runs, "sweeps": len(outcomes)}
        for metric in METRICS:
            mean, se, _ = mean_se([o[metric] for o in outcomes])
            row[f"{metric}_mean"], row[f"{metric}_se"] = round(mean, 5), round(se, 5)
        single = results[sampler, "single"]
        if name != "single" and len(outcomes) > 1:
            difference = paired_difference(
                {i: o["regret"] for i, o in enumerate(outcomes)}, {i: o["regret"] for i, o in enumerate(single)}
            )
            row |= {"regret_vs_single_mean": round(difference.mean, 5)}
            row |= {
                "regret_vs_single_low": round(difference.low, 5),
                "regret_vs_single_high": round(difference.high, 5),
            }
        rows.append(row)
    return rows


def shown(row: dict[str, Any], metric: str, percent: bool = False) -> str:
    mean, se = row[f"{metric}_mean"], row[f"{metric}_se"]
    if math.isnan(mean):
        return "n/a"
    if percent:
        return f"{100 * mean:.1f} ± {100 * se:.1f}%"
    return f"{mean:+.3f} ± {se:.3f}"


def text_table(rows: Sequence[dict[str, Any]]) -> str:
    """The table as Markdown (aligned, so it reads in a terminal too): mean ± standard error over the sweeps."""
    header = (
        "sampler", "strategy", "trials x runs", "best searched", "regret", "regret - single [95%]", "curse",
        "curse (seed part)", "covers f+d", "covers f", "test - f", "test covers",
    )  # fmt: skip
    lines = [header]
    for row in rows:
        plan = f"{row['trials']} x {row['repeats']}" + (
            f" + {row['top']} x {row['confirm_seeds']}" if row["top"] else ""
        )
        versus = ""
        if "regret_vs_single_mean" in row:
            low, high = row["regret_vs_single_low"], row["regret_vs_single_high"]
            versus = f"{row['regret_vs_single_mean']:+.3f} [{low:+.3f}, {high:+.3f}]"
        lines.append((
            row["sampler"], row["strategy"], plan, shown(row, "search_regret"), shown(row, "regret"), versus,
            shown(row, "curse"), shown(row, "curse_seed"), shown(row, "covers_val_truth", True),
            shown(row, "covers_truth", True), shown(row, "test_minus_truth"),
            shown(row, "test_covers_test_truth", True),
        ))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    lines.insert(1, tuple("-" * width for width in widths))
    return "\n".join(
        "| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) + " |" for line in lines
    )


def draw(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """The table as a picture, one row of panels per sampler: each strategy's regret, and what its reported
    validation figure overstates the truth by (seed part + split part) beside its test figure's error."""
    from cnnsweep.tools.plots import plt, save_figure  # matplotlib only when drawing

    samplers = list(dict.fromkeys(row["sampler"] for row in rows))
    figure, axes = plt.subplots(
        len(samplers), 2, figsize=(11, 0.6 + 2.4 * len(samplers)), squeeze=False, sharex="col"
    )  # shared scales: the samplers compare at a glance
    for (regret_axes, curse_axes), sampler in zip(axes, samplers, strict=True):
        chosen = [row for row in rows if row["sampler"] == sampler][::-1]  # first strategy on top
        names, y = [row["strategy"] for row in chosen], np.arange(len(chosen))
        regret_axes.barh(y, [r["regret_mean"] for r in chosen], xerr=[r["regret_se"] for r in chosen], color="0.6")
        regret_axes.set(yticks=y, yticklabels=names)
        regret_axes.set_title(f"{sampler}: what the choice costs", fontsize=10)
        seed = [r["curse_seed_mean"] for r in chosen]
        split = [r["curse_mean"] - r["curse_seed_mean"] for r in chosen]
        curse_axes.barh(y, seed, color="tab:orange", label="seed part")
        curse_axes.barh(y, split, left=seed, color="tab:red", label="validation split's part")
        curse_axes.errorbar(
            [r["test_minus_truth_mean"] for r in chosen], y, xerr=[r["test_minus_truth_se"] for r in chosen],
            fmt="o", color="tab:green", label="test figure",
        )  # fmt: skip
        curse_axes.axvline(0, color="black", linewidth=0.8)
        curse_axes.set(yticks=y, yticklabels=[])
        curse_axes.set_title(f"{sampler}: the winner's curse", fontsize=10)
        curse_axes.legend(fontsize=8, loc="lower right")
    axes[-1][0].set_xlabel("regret (points below the best true accuracy)")
    axes[-1][1].set_xlabel("reported minus true accuracy (points)")
    figure.tight_layout()
    return save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cnnsweep noise_sim",
        description=__doc__.splitlines()[0],
        epilog="e.g. " + __doc__.splitlines()[2],
    )
    parser.add_argument("--sweeps", type=int, default=400, help="simulated sweeps per strategy (default 400)")
    parser.add_argument("--runs", type=int, default=60, help="training runs each strategy spends per sweep (60)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated splits, seeds and samplers (0)")
    parser.add_argument("--repeats", type=int, default=3, help="K: seeds per trial for the repeats strategy (3)")
    parser.add_argument("--top", type=int, default=3, help="N: trials the confirm strategy retrains (3)")
    parser.add_argument("--confirm-seeds", type=int, default=5, help="M: fresh seeds for each confirmed trial (5)")
    parser.add_argument("--samplers", default=",".join(SAMPLERS), help="comma-separated: tpe, random (both)")
    parser.add_argument(
        "--strategies", default=",".join(STRATEGIES), help=f"comma-separated, of {', '.join(STRATEGIES)} (all)"
    )
    parser.add_argument("--seed-sd", type=float, default=Noise.val_seed_sd, help="a run's seed sd on validation")
    parser.add_argument("--split-sd", type=float, default=Noise.val_split_sd, help="the validation split's sd")
    parser.add_argument("--out", type=Path, default=Path("outputs/noise_sim"), help="folder for noise_sim.csv/.png")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        strategies = plans(args.runs, args.repeats, args.top, args.confirm_seeds)
        samplers = [name.strip() for name in args.samplers.split(",") if name.strip()]
        for name in samplers:
            make_sampler(name, 0)
        names = [name.strip() for name in args.strategies.split(",") if name.strip()]
        for name in names:
            if name not in STRATEGIES:
                raise UserError(f"--strategies: unknown strategy {name!r}; use {', '.join(STRATEGIES)}")
        if args.seed_sd < 0 or args.split_sd < 0:
            raise UserError(f"--seed-sd {args.seed_sd} and --split-sd {args.split_sd} must be 0 or more")
        if args.sweeps < 2:
            raise UserError(f"--sweeps {args.sweeps}: give at least 2 for a standard error")
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    start, cpu_start = time.perf_counter(), time.process_time()
    step = max(1, args.sweeps // 10)

    def progress(done: int) -> None:
        if done % step == 0:
            print(f"{done}/{args.sweeps} sweeps, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)

    noise = Noise(val_seed_sd=args.seed_sd, val_split_sd=args.split_sd)
    results = simulate(
        args.sweeps, args.runs, args.seed, args.repeats, args.top, args.confirm_seeds, samplers, noise, progress, names
    )
    rows = table(results, strategies)
    path = args.out / TABLE_FILE
    write_csv(path, rows)
    draw(rows, args.out / PLOT_FILE)
    print(text_table(rows))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start  # cpu: what a shared machine can't inflate
    print(f"{args.sweeps} simulated sweeps of {args.runs} runs each, {wall:.0f} s ({cpu:.0f} s of CPU); table: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
