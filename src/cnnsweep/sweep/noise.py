"""How sure a sweep's numbers are: the seeds that repeats and confirmations train on, and intervals over seeds.

Seeds. A trial's repeats (`hydra.sweeper.repeats=K`) train its configuration on the seeds `seed`, `seed + 1`,
..., `seed + K - 1`, where `seed` is the sweep's own (conf/train.yaml): every trial sees the same K seeds, so
two configurations are compared on the same initialisations, dropout masks, data orders and augmentations
(paired). The validation split is `data.split_seed`'s and stays the same for every repeat. A confirmation
trains on the next M seeds, `seed + K`, ..., `seed + K + M - 1`: seeds the search never used.

Intervals. A figure measured on n seeds is reported as its mean, its sample standard deviation and a
two-sided Student-t interval for the mean (the seeds are a small sample: t, not the normal, whose interval
is too narrow at n = 3-5). Two configurations measured on the same seeds are compared by the interval of
their paired differences, which removes what the seeds share.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats

CONFIDENCE = 0.95  # intervals' coverage, unless asked otherwise
SEED_KEY = "seed"  # the config key a run's seed is set by (conf/train.yaml): what repeats and confirmations override


def repeat_seeds(seed: int, repeats: int) -> list[int]:
    """The seeds a trial's `repeats` runs train on (the same for every trial of a sweep)."""
    return [seed + index for index in range(repeats)]


def confirmation_seeds(seed: int, repeats: int, count: int) -> list[int]:
    """`count` seeds the search (with `repeats` per trial) never used, for confirming its winners."""
    return [seed + repeats + index for index in range(count)]


@dataclass(frozen=True)
class Interval:
    """A mean over n seeds with its sample sd and a two-sided interval (low, high) for the true mean.

    With one seed there is no spread to measure: sd, low and high are NaN.
    """

    mean: float
    sd: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly on one side of 0 (a difference the data can tell)."""
        return self.low > 0 or self.high < 0


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The mean of `values` with its sd and Student-t interval."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to take the mean of")
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(mean, math.nan, math.nan, math.nan, 1)
    sd = math.sqrt(math.fsum((value - mean) ** 2 for value in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, sd, mean - half, mean + half, n)


def paired_difference(
    values: Mapping[int, float], baseline: Mapping[int, float], confidence: float = CONFIDENCE
) -> Interval:
    """The interval of `values - baseline` over the seeds both were measured on (keys are seeds)."""
    seeds = sorted(set(values) & set(baseline))
    if not seeds:
        raise ValueError("the two have no seed in common to compare on")
    return mean_interval([values[seed] - baseline[seed] for seed in seeds], confidence)
