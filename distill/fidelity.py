"""How far a deployed graph's outputs move from its fp32 graph's, and whether that keeps within the budget.

Flips need no labels, so they are counted on the dev split plus unlabelled training rows, at batch 1 (the deployed
batch), and judged on the pooled count with its binomial interval stated; the metric drop needs labels and stays on
dev. A regression model (one output) cannot flip: it is held to a score tolerance (largest and 99th-percentile
absolute change, in the label's units) and the drop of its dev metric. Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from distill.config import Int8Config
from distill.metrics import agreement, compute_metrics, predictions_from_logits
from distill.runtime import padded_feeds

CONFIDENCE = 0.95
Runner = Callable[[dict[str, np.ndarray]], object]


def flip_interval(flips: int, examples: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper-Pearson) binomial interval of a flip rate of ``flips`` out of ``examples``."""
    from scipy.stats import binomtest

    if examples == 0:
        return 0.0, 1.0
    interval = binomtest(flips, examples).proportion_ci(confidence_level=confidence, method="exact")
    return float(interval.low), float(interval.high)


def compare_outputs(
    reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray, metric_names: Sequence[str]
) -> dict[str, Any]:
    """How far ``candidate`` outputs are from ``reference`` on a pool whose first ``len(labels)`` rows are dev.

    Args:
        reference: ``(n, num_labels)`` logits of the fp32 graph (one column: regression scores).
        candidate: ``(n, num_labels)`` logits of the graph under test, same rows.
        labels: ``(n_dev,)`` gold labels of the first ``n_dev`` rows; the metric drop is measured on them alone.
    Returns:
        flips and flip rate with its interval over the whole pool (classification), the largest and 99th-percentile
        score change (regression), the largest |logit difference|, and the dev metric and its drop.
    """
    dev = len(labels)
    regression = reference.shape[-1] == 1
    reference_predictions, candidate_predictions = (predictions_from_logits(x) for x in (reference, candidate))
    main = metric_names[0]
    reference_metric = compute_metrics([main], reference_predictions[:dev], labels)[main]
    candidate_metric = compute_metrics([main], candidate_predictions[:dev], labels)[main]
    differs = np.zeros(len(reference), bool) if regression else reference_predictions != candidate_predictions
    flips = int(differs.sum())
    low, high = flip_interval(flips, len(reference))
    result: dict[str, Any] = {
        "examples": len(reference),
        "dev_examples": dev,
        "prediction_flips": flips,
        "flip_rate": flips / max(len(reference), 1),
        "flip_interval": [low, high],
        "dev_flip_rate": float(differs[:dev].mean()) if dev else 0.0,
        "max_abs_diff": float(np.abs(reference - candidate).max()) if len(reference) else 0.0,
        "metric": main,
        "metric_value": candidate_metric,
        "metric_drop": reference_metric - candidate_metric,
    }
    if regression:
        change = np.abs(reference[:, 0] - candidate[:, 0])
        result["score_change_max"] = float(change.max()) if len(change) else 0.0
        result["score_change_p99"] = float(np.percentile(change, 99)) if len(change) else 0.0
    return result


def budget_failures(check: dict[str, Any], cfg: Int8Config) -> list[str]:
    """Every way ``check`` (from :func:`compare_outputs`) breaks the INT8 budget; empty when it keeps within it."""
    failures = []
    if check["metric_drop"] > cfg.max_metric_drop:
        failures.append(
            f"dev {check['metric']} drop {100 * check['metric_drop']:.2f} pt > {100 * cfg.max_metric_drop:.2f}"
        )
    if "score_change_max" in check:
        if check["score_change_max"] > cfg.max_score_change:
            failures.append(f"largest score change {check['score_change_max']:.3f} > {cfg.max_score_change:g}")
        if check["score_change_p99"] > cfg.max_score_change_p99:
            failures.append(f"p99 score change {check['score_change_p99']:.3f} > {cfg.max_score_change_p99:g}")
    elif check["flip_rate"] > cfg.max_flip_rate:
        low, high = check["flip_interval"]
        failures.append(
            f"{100 * check['flip_rate']:.2f}% flips (95% CI {100 * low:.2f}-{100 * high:.2f}%, "
            f"{check['prediction_flips']} of {check['examples']}) > {100 * cfg.max_flip_rate:.2f}%"
        )
    return failures


def teacher_agreement(
    teacher: np.ndarray, fp32: np.ndarray, candidate: np.ndarray, regression: bool
) -> dict[str, float]:
    """Dev agreement with the teacher of the fp32 graph and of a candidate (regression: Pearson correlation of the
    scores), each ``(n_dev, num_labels)`` logits."""
    teacher_predictions = predictions_from_logits(teacher)
    return {
        "agreement_with_teacher": agreement(predictions_from_logits(candidate), teacher_predictions, regression),
        "fp32_agreement_with_teacher": agreement(predictions_from_logits(fp32), teacher_predictions, regression),
    }


def qat_failures(check: dict[str, Any], cfg: Int8Config) -> list[str]:
    """Every way a quantisation-aware candidate breaks its budget. Its weights were trained again, so flips against
    the fp32 student are reported, not judged: it must keep the fp32 student's dev metric (``max_metric_drop``) and
    its agreement with the teacher (``qat_max_agreement_drop``); ``check`` holds :func:`teacher_agreement` too."""
    failures = []
    if check["metric_drop"] > cfg.max_metric_drop:
        failures.append(
            f"dev {check['metric']} drop {100 * check['metric_drop']:.2f} pt > {100 * cfg.max_metric_drop:.2f}"
        )
    mine, fp32 = check["agreement_with_teacher"], check["fp32_agreement_with_teacher"]
    if fp32 - mine > cfg.qat_max_agreement_drop:
        failures.append(
            f"dev agreement with the teacher {mine:.4f} vs the fp32 student's {fp32:.4f}, "
            f"{fp32 - mine:.4f} lower > {cfg.qat_max_agreement_drop:g}"
        )
    return failures


def padding_check(
    run: Runner, names: list[str], encodings: list[dict[str, list[int]]], count: int = 8, atol: float = 1e-3
) -> dict[str, Any]:
    """Does a sentence get the same output alone as in a batch padded to much longer sentences?

    Takes the ``count`` shortest rows and runs each alone and then beside the ``count`` longest rows. A classifier
    fails on a flipped prediction (INT8 graphs quantise activations per batch, so their logits may move slightly);
    a regression model (one output) fails when a score moves by more than ``atol``.
    """
    order = sorted(range(len(encodings)), key=lambda i: len(encodings[i]["input_ids"]))
    shortest, longest = [encodings[i] for i in order[:count]], [encodings[i] for i in order[-count:]]
    alone = np.concatenate([_output_logits(run(padded_feeds([row], names))) for row in shortest])
    beside = np.stack([_output_logits(run(padded_feeds([row, *longest], names)))[0] for row in shortest])
    regression = alone.shape[1] == 1
    flips = 0 if regression else int((predictions_from_logits(alone) != predictions_from_logits(beside)).sum())
    max_diff = float(np.abs(alone - beside).max())
    return {
        "sentences": len(shortest),
        "padded_to": len(longest[-1]["input_ids"]),
        "max_abs_diff": max_diff,
        "flips": flips,
        "within_atol": max_diff <= atol,
        "passed": max_diff <= atol if regression else flips == 0,
    }


def _output_logits(output: object) -> np.ndarray:
    """Logits from a PyTorch model output (``.logits``) or an ONNX Runtime output list."""
    logits = output.logits if hasattr(output, "logits") else output[0]  # type: ignore[index]
    if hasattr(logits, "detach"):  # a torch tensor, without importing torch here
        logits = logits.detach().float().numpy()
    return np.asarray(logits)


SPEED_TIE = 1.05
"""Candidates within this factor of the fastest passing candidate's p50 count as equally fast (the same candidate
timed in two export runs of one student differed by 1% to 7% on a 2-core host); among them the smallest file ships."""


def select_fastest(candidates: Sequence[dict[str, Any]]) -> int | None:
    """Index of the fastest candidate within budget that also passed its padding check, or None.

    Each candidate has ``passed`` (within the fidelity budget), ``padding_passed`` and ``p50_ms``; one without a
    latency, or with an error, is never chosen. Candidates within :data:`SPEED_TIE` of the fastest are a tie, won by
    the smallest ``size_bytes`` (for example the graph with INT8 embedding tables: a third of the file at the same
    speed), then by speed.
    """
    eligible = [
        (candidate["p50_ms"], index)
        for index, candidate in enumerate(candidates)
        if candidate.get("passed") and candidate.get("padding_passed") and candidate.get("p50_ms") is not None
    ]
    if not eligible:
        return None
    fastest = min(eligible)[0]
    tied = [(candidates[index].get("size_bytes", float("inf")), p50, index) for p50, index in eligible]
    return min(item for item in tied if item[1] <= SPEED_TIE * fastest)[2]


QAT_SPEED_MARGIN = 1.1
"""``qat: auto`` runs when nothing within budget comes within this factor of the fastest candidate's p50."""


def wants_qat(mode: str | bool, candidates: Sequence[dict[str, Any]]) -> bool:
    """Whether quantisation-aware fine-tuning should add candidates: ``True``, or ``"auto"`` when the fastest
    post-training candidate (records as :func:`select_fastest` takes them) breaks the budget and the fastest one
    within it, if any, is more than 10% slower."""
    if mode != "auto":
        return bool(mode)
    timed = [record for record in candidates if record.get("p50_ms") is not None]
    if not timed:
        return False
    fastest = min(record["p50_ms"] for record in timed)
    chosen = select_fastest(timed)
    return chosen is None or timed[chosen]["p50_ms"] > QAT_SPEED_MARGIN * fastest
