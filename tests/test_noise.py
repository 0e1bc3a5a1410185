"""cnnsweep.sweep.noise: the seeds repeats and confirmations use, and intervals over seeds."""

import math

import numpy as np
import pytest

from cnnsweep.sweep.noise import confirmation_seeds, mean_interval, paired_difference, repeat_seeds


def test_repeats_share_seeds_and_confirmation_seeds_are_fresh():
    assert repeat_seeds(0, 3) == [0, 1, 2]
    assert repeat_seeds(7, 1) == [7]  # one repeat: the run's own seed, as a sweep without repeats
    fresh = confirmation_seeds(7, 3, 5)
    assert fresh == [10, 11, 12, 13, 14]
    assert not set(fresh) & set(repeat_seeds(7, 3))


def test_mean_interval_is_student_t():
    interval = mean_interval([0.990, 0.992, 0.994])
    assert interval.mean == pytest.approx(0.992)
    assert interval.sd == pytest.approx(0.002)
    # t(0.975, 2 dof) = 4.3027: the half width is 4.3027 * 0.002 / sqrt(3)
    assert interval.half_width == pytest.approx(4.3027 * 0.002 / math.sqrt(3), rel=1e-4)
    assert interval.contains(0.992) and not interval.contains(0.999)


def test_one_value_has_no_spread():
    interval = mean_interval([0.99])
    assert interval.mean == 0.99 and interval.n == 1
    assert math.isnan(interval.sd) and math.isnan(interval.low) and math.isnan(interval.high)
    with pytest.raises(ValueError):
        mean_interval([])


def test_the_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    covered = sum(mean_interval(list(rng.normal(0.994, 0.0005, 5))).contains(0.994) for _ in range(2000))
    assert 0.93 <= covered / 2000 <= 0.97


def test_paired_difference_removes_what_the_seeds_share():
    seed_effect = {0: 0.002, 1: -0.003, 2: 0.001, 3: 0.0}
    baseline = {seed: 0.990 + effect for seed, effect in seed_effect.items()}
    better = {seed: value + 0.0005 + 0.0001 * (seed % 2) for seed, value in baseline.items()}
    difference = paired_difference(better, baseline)
    assert difference.n == 4 and difference.excludes_zero()  # paired: the shared seed effects cancel
    assert not mean_interval(list(better.values())).low > mean_interval(list(baseline.values())).high
    with pytest.raises(ValueError):
        paired_difference({5: 1.0}, baseline)
