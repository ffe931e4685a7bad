"""Intervals over seeds and the paired bootstrap, on synthetic predictions with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import t as student_t

from distill.stats import Interval, paired_bootstrap, seed_interval, verdict


def test_seed_interval_by_hand():
    summary = seed_interval([0.80, 0.82, 0.84])
    assert summary.mean == pytest.approx(0.82)
    assert summary.std == pytest.approx(0.02)  # sample standard deviation
    half = student_t.ppf(0.975, 2) * 0.02 / np.sqrt(3)  # 4.303 * 0.01155 = 0.0497
    assert half == pytest.approx(0.0497, abs=1e-4)
    assert (summary.interval.low, summary.interval.high) == pytest.approx((0.82 - half, 0.82 + half))


def test_one_seed_has_no_spread():
    summary = seed_interval([0.9])
    assert summary.std == 0.0 and summary.interval.low == summary.interval.high == 0.9


def test_identical_systems_differ_by_exactly_zero():
    labels = np.random.default_rng(0).integers(0, 2, 500)
    predictions = np.random.default_rng(1).integers(0, 2, 500)
    interval = paired_bootstrap([predictions], [predictions.copy()], labels)
    assert interval.estimate == interval.low == interval.high == 0.0
    assert not interval.excludes_zero()


def test_a_clear_gain_is_detected_with_the_right_size():
    # A is right on 90% of 1000 examples, B on the same examples minus 50: a gain of exactly 5 points
    labels = np.zeros(1000, dtype=int)
    a = np.where(np.arange(1000) < 900, 0, 1)
    b = np.where(np.arange(1000) < 850, 0, 1)
    interval = paired_bootstrap([a], [b], labels, resamples=4000)
    assert interval.estimate == pytest.approx(0.05)
    assert interval.excludes_zero()
    # paired: the per-example difference is 1 on 50 examples, 0 elsewhere -> sd of the mean ~ sqrt(.05*.95/1000)
    assert interval.low == pytest.approx(0.05 - 1.96 * np.sqrt(0.05 * 0.95 / 1000), abs=0.006)
    assert interval.high == pytest.approx(0.05 + 1.96 * np.sqrt(0.05 * 0.95 / 1000), abs=0.006)


def test_noise_sized_difference_is_not_called_a_gain():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 872)
    a = np.where(rng.random(872) < 0.88, labels, 1 - labels)
    b = np.where(rng.random(872) < 0.88, labels, 1 - labels)  # independent, same true accuracy
    interval = paired_bootstrap([a], [b], labels)
    assert interval.low < 0 < interval.high


def test_seeds_are_averaged_before_comparing():
    labels = np.zeros(4, dtype=int)
    a = [np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1])]  # 75% and 50%: mean 62.5%
    b = [np.array([0, 1, 1, 1])]  # 25%
    assert paired_bootstrap(a, b, labels, resamples=10).estimate == pytest.approx(0.375)


def test_other_metrics_use_the_same_resamples():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 300)
    a = np.where(rng.random(300) < 0.9, labels, 1 - labels)
    interval = paired_bootstrap([a], [a], labels, metric="matthews", resamples=50)
    assert interval.estimate == interval.low == interval.high == 0.0


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="as long as labels"):
        paired_bootstrap([np.zeros(3)], [np.zeros(4)], np.zeros(3))


def test_verdicts_in_words():
    assert verdict("distillation", Interval(0.009, 0.003, 0.015)) == (
        "distillation gained +0.90 points (95% interval +0.30 to +1.50)"
    )
    assert verdict("distillation", Interval(-0.02, -0.03, -0.01)).startswith(
        "distillation lost 2.00 points (95% interval -3.00 to -1.00)"
    )
    assert verdict("distillation", Interval(0.002, -0.005, 0.009)) == (
        "no gain or loss from distillation detected: +0.20 points (95% interval -0.50 to +0.90, which includes zero)"
    )
