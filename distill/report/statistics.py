"""Is a difference real? Intervals over seeds, paired bootstrap intervals over dev examples, and a run's statistics.

- :func:`seed_interval`: mean, standard deviation and a Student-t 95% interval of one metric over training seeds.
- :func:`paired_bootstrap`: the difference of a metric between two systems (each possibly several seeds) on the
  same dev examples, with a percentile interval from resampling examples with replacement. Resampling the same
  indices for both systems keeps the pairing, which is what makes small real gains detectable.
- :func:`bootstrap_interval`, :func:`bootstrap_standard_error`: one system's metric with its bootstrap interval, or
  its standard error, over the examples (``distill evaluate``, and the teacher's in ``statistics.json``).
- :func:`verdict`: the sentence a reader acts on.
- :func:`run_statistics`: every student of a run over its seeds, against its label-only twin and the teacher,
  written to ``RUN/statistics.json`` (:class:`distill.records.Statistics`); :func:`statistics_section` is its
  section of report.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import t as student_t

from distill.files import write_json
from distill.layout import DEV_LOGITS_FILE, EVAL_FILE, RECIPE_FILE, TWIN_SUFFIX, RunLayout, seed_dirs
from distill.metrics import METRICS, predictions_from_logits
from distill.records import (
    IntervalRecord,
    SeedSummaryRecord,
    Statistics,
    StudentEval,
    StudentRecord,
    StudentStatistics,
    TeacherEval,
)
from distill.report.markdown import section
from distill.report.results import as_json, student_dirs

METHOD = (
    "metric over seeds: mean, sample std, Student-t 95% interval; gains: paired bootstrap over dev examples of the "
    "seed-averaged metric difference, 95% percentile interval"
)


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

    def record(self, **sentences: str | None) -> IntervalRecord:
        """This interval as stored in ``statistics.json``, with its ``verdict`` or ``reading``."""
        return IntervalRecord(**self.to_dict(), **sentences)


@dataclass(frozen=True)
class SeedSummary:
    """One metric over seeds: mean, sample standard deviation (0 for one seed) and the t interval of the mean."""

    values: list[float]
    mean: float
    std: float
    interval: Interval

    def to_dict(self) -> dict[str, object]:
        return {"values": self.values, "mean": self.mean, "std": self.std, "interval": self.interval.to_dict()}

    def record(self) -> SeedSummaryRecord:
        return SeedSummaryRecord(values=self.values, mean=self.mean, std=self.std, interval=self.interval.record())


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

    ``scipy.stats.bootstrap(..., paired=True, method="percentile")`` draws the same resamples from the same
    generator but sums in another order, so its bounds differ from these in the last bits; this implementation is
    kept so that the committed ``statistics.json`` files stay reproducible to the byte.
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


def _resampled_metric(
    predictions: np.ndarray, labels: np.ndarray, metric: str, resamples: int, seed: int
) -> np.ndarray:
    """``metric`` of one system's ``predictions`` on ``resamples`` bootstrap resamples of the examples (NaN where
    undefined, such as a correlation of a resample whose predictions are all equal)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape[0] != labels.shape[0] or labels.shape[0] == 0:
        raise ValueError("a bootstrap needs as many predictions as labels, and at least one")
    n, rng = labels.shape[0], np.random.default_rng(seed)
    if metric == "accuracy":  # vectorised, as in paired_bootstrap
        return (predictions == labels).astype(float)[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    function, values = METRICS[metric], np.empty(resamples)
    with warnings.catch_warnings():  # undefined F1 and correlations of degenerate resamples: NaN or 0, never noise
        warnings.simplefilter("ignore")
        for r in range(resamples):
            index = rng.integers(0, n, size=n)
            values[r] = function(predictions[index], labels[index])
    return values


def bootstrap_interval(
    predictions: np.ndarray,
    labels: np.ndarray,
    metric: str = "accuracy",
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """``metric`` of one system's predictions ``(n,)`` against ``labels`` ``(n,)``, with the percentile interval of
    its values on bootstrap resamples of the ``n`` examples."""
    values = _resampled_metric(predictions, labels, metric, resamples, seed)
    tail = (1 - level) / 2
    low, high = np.nanquantile(values, [tail, 1 - tail])
    return Interval(METRICS[metric](np.asarray(predictions), np.asarray(labels)), float(low), float(high), level)


def bootstrap_standard_error(
    predictions: np.ndarray, labels: np.ndarray, metric: str = "accuracy", resamples: int = 2000, seed: int = 0
) -> float:
    """The standard error of one system's ``metric`` on these examples: its standard deviation over bootstrap
    resamples of them (for accuracy close to the binomial ``sqrt(p(1-p)/n)``)."""
    return float(np.nanstd(_resampled_metric(predictions, labels, metric, resamples, seed), ddof=1))


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


def _predictions(directory: Path) -> np.ndarray:
    return predictions_from_logits(np.load(directory / DEV_LOGITS_FILE))


def _seed_name(directory: Path) -> str:
    record = StudentRecord.load_optional(directory / RECIPE_FILE)
    return str(record.seed) if record is not None and record.seed is not None else directory.name


def run_statistics(
    run_dir: Path,
    labels: np.ndarray,
    metric_names: list[str],
    resamples: int = 2000,
    seed: int = 0,
    twins: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Statistics of every student in ``run_dir`` against its twin and the teacher; written to ``statistics.json``.

    Args:
        labels: the dev split's gold labels, in the order of every ``dev_logits.npy``.
        metric_names: the task's metrics; the first is the one gains are measured in.
        twins: ``{student: twin}`` for students measured against another student's twin (a recipe variant
            beside the recommended one); any other student's twin is ``NAME-twin``.
    Returns:
        The :class:`distill.records.Statistics` written, as JSON.
    """
    layout = RunLayout(run_dir)
    metric = metric_names[0]
    labels = np.asarray(labels)
    teacher_eval = TeacherEval.load(layout.teacher_eval)
    teacher_predictions = [_predictions(layout.teacher)]
    directories = student_dirs(layout)
    predictions = {d.name: [_predictions(path) for path in seed_dirs(d)] for d in directories}
    teacher_metric = teacher_eval.metrics[metric]
    teacher_error = bootstrap_standard_error(teacher_predictions[0], labels, metric, resamples, seed)
    students: dict[str, StudentStatistics] = {}
    for student_dir in directories:
        name = student_dir.name
        seeds = seed_dirs(student_dir)
        evaluations = [StudentEval.load(path / EVAL_FILE) for path in seeds]
        selected = evaluations[0] if seeds == [student_dir] else StudentEval.load(student_dir / EVAL_FILE)
        metrics = {
            name_: seed_interval([e.metrics[name_] for e in evaluations]).record()
            for name_ in metric_names
            if all(name_ in e.metrics for e in evaluations)
        }
        versus_teacher = paired_bootstrap(predictions[name], teacher_predictions, labels, metric, resamples, seed=seed)
        entry: dict[str, Any] = {
            "objective": evaluations[0].objective,
            "seeds": [_seed_name(path) for path in seeds],
            "selected_seed": selected.selected_seed,
            "metrics": metrics,
            "retained_vs_teacher": metrics[metric].mean / teacher_metric if teacher_metric else None,
            "vs_teacher": versus_teacher.record(verdict=verdict("the student", versus_teacher)),
        }
        twin = (twins or {}).get(name, f"{name}{TWIN_SUFFIX}")
        if not name.endswith(TWIN_SUFFIX) and twin in predictions:
            gain = paired_bootstrap(predictions[name], predictions[twin], labels, metric, resamples, seed=seed)
            headroom = paired_bootstrap(teacher_predictions, predictions[twin], labels, metric, resamples, seed=seed)
            entry["twin"] = twin
            entry["gain_over_twin"] = gain.record(verdict=verdict("distillation", gain))
            entry["teacher_over_twin"] = headroom.record(reading=headroom_reading(gain, headroom))
        students[name] = StudentStatistics(**entry)
    statistics = Statistics(
        metric=metric,
        dev_examples=int(labels.shape[0]),
        bootstrap_resamples=resamples,
        teacher={"metrics": teacher_eval.metrics, "standard_error": {metric: teacher_error}},
        students=students,
        method=METHOD,
    )
    data = as_json(statistics)
    write_json(layout.statistics, data)
    return data


def points_text(value: IntervalRecord, scale: float = 100.0) -> str:
    """An interval in points: ``"+0.90 (+0.30 to +1.50)"``."""
    return f"{scale * value.estimate:+.2f} ({scale * value.low:+.2f} to {scale * value.high:+.2f})"


def summary_text(value: SeedSummaryRecord) -> str:
    """A metric over seeds: the value for one seed; mean ± std with its 95% interval for several."""
    if len(value.values) == 1:
        return f"{value.mean:.4f}"
    return f"{value.mean:.4f} ± {value.std:.4f} (95% {value.interval.low:.4f} to {value.interval.high:.4f})"


def statistics_section(statistics: Statistics | dict[str, Any]) -> list[str]:
    """The report's "does distillation pay" section: every student beside its twin, with intervals and verdicts."""
    if not isinstance(statistics, Statistics):
        statistics = Statistics.model_validate(statistics)
    metric = statistics.metric
    rows, sentences = [], []
    for name, entry in statistics.students.items():
        gain, retained = entry.gain_over_twin, entry.retained_vs_teacher
        rows.append(
            [name, ", ".join(entry.seeds), summary_text(entry.metrics[metric])]
            + [points_text(gain) if gain is not None else "n/a", points_text(entry.vs_teacher)]
            + ["?" if retained is None else f"{retained:.1%}"]
        )
        if gain is not None:
            sentences.append(f"- `{name}` vs its twin `{entry.twin}`: {gain.verdict}.")
            headroom = entry.teacher_over_twin  # absent in statistics from before it
            if headroom is not None and headroom.reading:
                sentences.append(f"  Why: {headroom.reading}.")
        if entry.selected_seed is not None:
            sentences.append(f"- `{name}`: the exported model is seed {entry.selected_seed}, the best on dev.")
    intro = (
        f"Dev {metric} over seeds (mean ± standard deviation, 95% interval of the mean) and paired-bootstrap 95% "
        f"intervals over the {statistics.dev_examples} dev examples ({statistics.bootstrap_resamples} "
        "resamples) for the difference against the label-only twin and against the teacher, in points."
    )
    columns = ["student", "seeds", f"dev {metric}", "gain over twin", "vs teacher", "retained"]
    return [*section("Does distillation pay?", columns, rows, intro), *sentences, ""]
