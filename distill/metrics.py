"""Task metrics (accuracy, F1, Matthews, Pearson, Spearman) and agreement between two models' predictions."""

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
