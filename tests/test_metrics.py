"""Unit tests for task metrics, agreement and logits-to-predictions, on small hand-checked arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distill.metrics import METRICS, agreement, compute_metrics, predictions_from_logits
from distill.tasks import GLUE_TASKS

GOLD = np.array([1, 1, 1, 0, 0, 0])
PRED = np.array([1, 1, 0, 1, 0, 0])  # TP=2 FN=1 FP=1 TN=2


def test_accuracy():
    assert compute_metrics(["accuracy"], PRED, GOLD) == {"accuracy": pytest.approx(4 / 6)}


def test_binary_f1_counts_the_positive_class():
    # precision 2/3, recall 2/3 -> F1 2/3
    assert compute_metrics(["f1"], PRED, GOLD)["f1"] == pytest.approx(2 / 3)
    # all-positive predictions: precision 1/2, recall 1 -> F1 2/3; all-negative -> 0
    assert compute_metrics(["f1"], np.ones(6, dtype=int), GOLD)["f1"] == pytest.approx(2 / 3)
    assert compute_metrics(["f1"], np.array([0, 0, 0, 0, 0, 1]), GOLD)["f1"] == pytest.approx(0.0)


def test_multiclass_f1_is_macro():
    gold = np.array([0, 1, 2, 2])
    pred = np.array([0, 1, 2, 1])
    # class 0: F1 1; class 1: P 1/2 R 1 -> 2/3; class 2: P 1 R 1/2 -> 2/3
    assert compute_metrics(["f1"], pred, gold)["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_f1_when_predictions_use_a_class_missing_from_the_gold_slice():
    # A 3-class model scored on a dev slice that only holds classes 0 and 1 must not crash.
    gold = np.array([0, 1, 1, 0])
    pred = np.array([0, 2, 1, 1])
    # macro over {0, 1, 2}: class 0 P 1 R 1/2 -> 2/3; class 1 P 1/2 R 1/2 -> 1/2; class 2 -> 0
    assert compute_metrics(["f1"], pred, gold)["f1"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)


def test_matthews_by_hand():
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (4 - 1) / sqrt(3*3*3*3) = 1/3
    assert compute_metrics(["matthews"], PRED, GOLD)["matthews"] == pytest.approx(1 / 3)
    assert compute_metrics(["matthews"], GOLD, GOLD)["matthews"] == pytest.approx(1.0)
    assert compute_metrics(["matthews"], 1 - GOLD, GOLD)["matthews"] == pytest.approx(-1.0)


def test_pearson_by_hand():
    gold = np.array([1.0, 2.0, 3.0, 4.0])
    assert compute_metrics(["pearson"], 2 * gold + 5, gold)["pearson"] == pytest.approx(1.0)
    assert compute_metrics(["pearson"], -gold, gold)["pearson"] == pytest.approx(-1.0)
    # deviations (-1, 1, 0) and (-1, 0, 1): covariance 1 over variances 2 and 2 -> r = 0.5
    assert compute_metrics(["pearson"], np.array([1.0, 3.0, 2.0]), np.array([1.0, 2.0, 3.0]))[
        "pearson"
    ] == pytest.approx(0.5)


def test_spearman_uses_ranks_only():
    gold = np.array([1.0, 2.0, 3.0, 4.0])
    monotone = np.array([0.1, 10.0, 100.0, 1e4])
    assert compute_metrics(["spearman"], monotone, gold)["spearman"] == pytest.approx(1.0)
    assert compute_metrics(["pearson"], monotone, gold)["pearson"] < 0.9
    # ranks [1,3,2,4] vs [1,2,3,4]: 1 - 6*2/(4*15) = 0.8
    assert compute_metrics(["spearman"], np.array([1.0, 3.0, 2.0, 4.0]), gold)["spearman"] == pytest.approx(0.8)


def test_compute_metrics_returns_every_named_metric_as_float():
    result = compute_metrics(["accuracy", "f1", "matthews"], list(PRED), list(GOLD))
    assert list(result) == ["accuracy", "f1", "matthews"]
    assert all(type(value) is float for value in result.values())


def test_every_task_metric_is_implemented():
    for name, preset in GLUE_TASKS.items():
        assert set(preset.metrics) <= set(METRICS), name


def test_agreement_classification():
    assert agreement(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0])) == pytest.approx(0.75)
    assert agreement(np.array([2, 2]), np.array([2, 2])) == 1.0


def test_agreement_regression_is_pearson():
    scores = np.array([0.5, 1.5, 2.0, 4.0])
    assert agreement(scores, 3 * scores - 1, regression=True) == pytest.approx(1.0)
    assert agreement(np.array([1.0, 3.0, 2.0]), np.array([1.0, 2.0, 3.0]), regression=True) == pytest.approx(0.5)


def test_predictions_from_two_class_logits():
    logits = np.array([[0.2, -1.0], [-0.5, 3.0], [1.0, 1.5]])
    np.testing.assert_array_equal(predictions_from_logits(logits), [0, 1, 1])


def test_predictions_from_three_class_logits():
    logits = np.array([[0.0, 0.0, 5.0], [9.0, 1.0, 2.0]])
    np.testing.assert_array_equal(predictions_from_logits(logits), [2, 0])


def test_predictions_from_regression_logits_are_the_scores():
    logits = np.array([[0.25], [3.5], [-1.0]], dtype=np.float32)
    predictions = predictions_from_logits(logits)
    assert predictions.shape == (3,)
    np.testing.assert_allclose(predictions, [0.25, 3.5, -1.0])
    assert not math.isnan(compute_metrics(["pearson"], predictions, np.array([0.0, 4.0, -2.0]))["pearson"])
