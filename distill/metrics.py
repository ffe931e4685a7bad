"""Task metrics (accuracy, F1, Matthews, Pearson, Spearman), their display names and approximate standard errors, and
agreement between two models' predictions."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def predictions_from_logits(logits: np.ndarray) -> np.ndarray:
    """Class ids from ``(n, num_labels)`` logits, or the scores themselves for regression (``num_labels == 1``)."""
    logits = np.asarray(logits)
    if logits.ndim == 2 and logits.shape[1] == 1:
        return logits[:, 0]
    return logits.argmax(axis=-1)


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda pred, gold: float(accuracy_score(gold, pred)),
    "f1": lambda pred, gold: float(
        f1_score(gold, pred, average="binary" if set(np.union1d(gold, pred).tolist()) <= {0, 1} else "macro")
    ),
    "matthews": lambda pred, gold: float(matthews_corrcoef(gold, pred)),
    "pearson": lambda pred, gold: float(pearsonr(pred, gold)[0]),
    "spearman": lambda pred, gold: float(spearmanr(pred, gold)[0]),
}


METRIC_NAMES = {"accuracy": "accuracy", "f1": "F1", "matthews": "MCC", "pearson": "Pearson", "spearman": "Spearman"}
"""How titles and sentences name each metric."""
CORRELATION_METRICS = frozenset({"matthews", "pearson", "spearman"})


def metric_name(metric: str) -> str:
    """The display name of ``metric`` (``"MCC"`` for ``matthews``); an unknown name as it is."""
    return METRIC_NAMES.get(metric, metric)


def approximate_standard_error(metric: str, value: float, examples: int) -> float:
    """One model's standard error in ``metric`` on ``examples`` dev examples, from its value alone.

    For when its predictions are not at hand (a bootstrap of them is better:
    :func:`distill.report.statistics.bootstrap_standard_error`). Accuracy and F1: the binomial ``sqrt(p(1-p)/n)``
    (for F1 an underestimate, since F1 rests on the examples either side calls positive). Correlations (Pearson,
    Spearman, and Matthews, the correlation of two binary variables): Fisher's approximation ``(1 - r^2) / sqrt(n-3)``.
    """
    if metric in CORRELATION_METRICS:
        return float((1 - value**2) / np.sqrt(max(examples - 3, 1)))
    return float(np.sqrt(max(value * (1 - value), 0.0) / max(examples, 1)))


def compute_metrics(names: Sequence[str], predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Every named metric of ``predictions`` (class ids or regression scores) against ``labels``."""
    return {name: METRICS[name](np.asarray(predictions), np.asarray(labels)) for name in names}


def agreement(predictions: np.ndarray, reference: np.ndarray, regression: bool = False) -> float:
    """Fraction of examples where two models predict the same class.

    For regression, the Pearson correlation between the two models' scores stands in for agreement.
    """
    predictions, reference = np.asarray(predictions), np.asarray(reference)
    if regression:
        return float(pearsonr(predictions, reference)[0])
    return float((predictions == reference).mean())
