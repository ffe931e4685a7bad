"""Is a difference real? Intervals over seeds and paired bootstrap intervals over dev examples.

- :func:`seed_interval`: mean, standard deviation and a Student-t 95% interval of one metric over training seeds.
- :func:`paired_bootstrap`: the difference of a metric between two systems (each possibly several seeds) on the
  same dev examples, with a percentile interval from resampling examples with replacement. Resampling the same
  indices for both systems keeps the pairing, which is what makes small real gains detectable.
- :func:`verdict`: the sentence a reader acts on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import t as student_t

from distill.metrics import METRICS


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval at ``level``."""

    estimate: float
    low: float
    high: float
    level: float = 0.95

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class SeedSummary:
    """One metric over seeds: mean, sample standard deviation (0 for one seed) and the t interval of the mean."""

    values: list[float]
    mean: float
    std: float
    interval: Interval

    def to_dict(self) -> dict[str, object]:
        return {"values": self.values, "mean": self.mean, "std": self.std, "interval": self.interval.to_dict()}


def seed_interval(values: Sequence[float], level: float = 0.95) -> SeedSummary:
    """Mean of ``values`` (one per seed) with a Student-t interval; with one seed the interval is that value."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise ValueError("seed_interval needs at least one value")
    mean = float(array.mean())
    if array.size == 1:
        return SeedSummary([float(array[0])], mean, 0.0, Interval(mean, mean, mean, level))
    std = float(array.std(ddof=1))
    half = float(student_t.ppf(0.5 + level / 2, df=array.size - 1)) * std / np.sqrt(array.size)
    return SeedSummary(array.tolist(), mean, std, Interval(mean, mean - half, mean + half, level))


def _mean_metric(metric: str, predictions: Sequence[np.ndarray], labels: np.ndarray, index: np.ndarray) -> float:
    function = METRICS[metric]
    return float(np.mean([function(p[index], labels[index]) for p in predictions]))


def paired_bootstrap(
    predictions_a: Sequence[np.ndarray],
    predictions_b: Sequence[np.ndarray],
    labels: np.ndarray,
    metric: str = "accuracy",
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """``metric(A) - metric(B)`` on the dev set, each averaged over its seeds, with a paired bootstrap interval.

    Args:
        predictions_a / predictions_b: one array of predictions (class ids or scores) per seed, over the same
            ``n`` dev examples in the same order.
        labels: ``(n,)`` gold labels.
        resamples: bootstrap resamples of the ``n`` examples (the same resample for A and B).
    Returns:
        The observed difference and the percentile interval of the resampled differences.
    """
    labels = np.asarray(labels)
    a = [np.asarray(p) for p in predictions_a]
    b = [np.asarray(p) for p in predictions_b]
    if not a or not b or any(p.shape[0] != labels.shape[0] for p in (*a, *b)):
        raise ValueError("paired_bootstrap needs at least one prediction array per system, each as long as labels")
    n = labels.shape[0]
    everything = np.arange(n)
    observed = _mean_metric(metric, a, labels, everything) - _mean_metric(metric, b, labels, everything)
    rng = np.random.default_rng(seed)
    if metric == "accuracy":  # vectorised: per-example correctness averaged over seeds
        correct = np.mean([p == labels for p in a], axis=0) - np.mean([p == labels for p in b], axis=0)
        indices = rng.integers(0, n, size=(resamples, n))
        differences = correct[indices].mean(axis=1)
    else:
        differences = np.empty(resamples)
        for r in range(resamples):
            index = rng.integers(0, n, size=n)
            differences[r] = _mean_metric(metric, a, labels, index) - _mean_metric(metric, b, labels, index)
    tail = (1 - level) / 2
    low, high = np.quantile(differences, [tail, 1 - tail])
    return Interval(float(observed), float(low), float(high), level)


def _span(interval: Interval, scale: float) -> str:
    """``"95% interval +0.30 to +1.50"``, in the reported unit."""
    return f"{interval.level:.0%} interval {scale * interval.low:+.2f} to {scale * interval.high:+.2f}"


def verdict(subject: str, interval: Interval, scale: float = 100.0, unit: str = "points") -> str:
    """``"distillation gained +0.90 points (95% interval +0.30 to +1.50)"``, or that no difference was detected.

    ``scale`` turns fractions into the reported unit (100 for accuracy points).
    """
    span = _span(interval, scale)
    estimate = f"{scale * interval.estimate:+.2f} {unit}"
    if not interval.excludes_zero():
        return f"no gain or loss from {subject} detected: {estimate} ({span}, which includes zero)"
    if interval.estimate > 0:
        return f"{subject} gained {estimate} ({span})"
    return f"{subject} lost {scale * -interval.estimate:.2f} {unit} ({span})"  # not "lost -2.00 points"


def headroom_reading(gain: Interval, headroom: Interval, scale: float = 100.0, unit: str = "points") -> str | None:
    """Why no gain over the twin was detected, or None when the gain's interval excludes zero (a gain or a loss).

    ``headroom`` is the teacher's lead over the label-only twin: a student that copies its teacher can gain about
    that much and no more, so it tells a teacher with too little lead to show a gain on this dev set from a recipe
    that passed on too little of a real lead.
    """
    if gain.excludes_zero():
        return None
    lead = f"{scale * headroom.estimate:+.2f} {unit}, {_span(headroom, scale)}"
    if headroom.low > 0:
        return (
            f"the teacher is measurably better than the twin ({lead}), so the recipe passed on too little of its "
            "lead: tune the distillation (temperature, loss weights, epochs, augmentation)"
        )
    return (
        f"the teacher itself is not measurably better than the twin ({lead}), which leaves a student little room "
        "to show a gain on this dev set: a stronger teacher (for example a larger pretrained model as "
        "teacher.source) or a larger dev set is what would tell"
    )
