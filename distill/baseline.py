"""The trivial baseline of a task: what answering without reading the text scores on dev, in every task metric.

Classification: always the train split's most frequent class, scored with the task's own metrics (accuracy is that
class's share of dev; binary F1 is the positive class's, so it is 0 when the majority is the negative class and
high when it is the positive one: on MRPC the majority class scores F1 0.81; Matthews is 0). Regression: always the
train split's mean score, whose MSE on dev is reported; the correlations of a constant are undefined and count as 0.
The teacher's quality gate (:func:`distill.teacher.quality_gate`) compares the main metric with this baseline's.
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from distill.metrics import CORRELATION_METRICS, compute_metrics
from distill.records import TrivialBaseline

if TYPE_CHECKING:
    from distill.data import TaskData


def _constant_metrics(names: list[str], answer: float, labels: np.ndarray) -> dict[str, float]:
    """Every metric in ``names`` of predicting ``answer`` for every dev example; a correlation is 0 (Pearson and
    Spearman of a constant are undefined, Matthews is 0 by convention)."""
    constant = np.full(labels.shape[0], answer)
    others = [name for name in names if name not in CORRELATION_METRICS]
    with warnings.catch_warnings():  # sklearn warns that F1 of a predictor without positives is 0: that is the point
        warnings.simplefilter("ignore")
        scored = compute_metrics(others, constant, labels)
    return {name: 0.0 if name in CORRELATION_METRICS else scored[name] for name in names}


def trivial_baseline(data: TaskData) -> TrivialBaseline:
    """The dev score, in every metric of ``data.metrics``, of answering without reading the text.

    Classification: always the train split's majority class (the first of equals in class-id order).
    Regression: always the train split's mean score; ``mse`` is its mean squared error on dev.
    """
    labels = np.asarray(data.validation["label"])
    if data.is_regression:
        mean = float(np.mean(data.train["label"]))
        metrics = _constant_metrics(list(data.metrics), mean, labels)
        return TrivialBaseline(mean=mean, metrics=metrics, mse=float(np.mean((labels - mean) ** 2)))
    assert data.label_names is not None, "classification has label names"
    counts = Counter(int(label) for label in data.train["label"])
    majority = max(sorted(counts), key=lambda class_id: counts[class_id])
    metrics = _constant_metrics(list(data.metrics), majority, labels)
    return TrivialBaseline(label=data.label_names[majority], metrics=metrics)
