"""Typed record of ``onnx/NAME/fidelity.json``: an ONNX bundle's checks against PyTorch, and what graph optimisation
and INT8 built, measured, timed and shipped (see :mod:`distill.records` for the conventions)."""

from __future__ import annotations

from typing import Any

from distill.records import Record


class AgainstFp32(Record):
    """How far a graph variant's dev outputs are from its fp32 ONNX graph's."""

    flip_rate: float | None = None
    metric_drop: float | None = None
    max_abs_diff: float | None = None


class Int8Try(AgainstFp32):
    """One INT8 setting tried, and whether it kept within the budget (or the error that stopped it)."""

    setting: str
    passed: bool = False
    error: str | None = None


class Variant(Record):
    """A graph variant of a bundle: whether it was tried, whether it was kept, and why not."""

    enabled: bool = False
    kept: bool | None = None
    reason: str | None = None


class LayerNormChoice(Record):
    """Whether the fused graph keeps each residual ``Add`` and its LayerNorm apart or fused (the faster at batch 1)."""

    kept: str  # "apart" (served with ONNX Runtime's SkipLayerNormFusion switched off) or "fused"
    fused_p50_ms: float | None = None
    apart_p50_ms: float | None = None


class OptimizedFidelity(Variant, AgainstFp32):
    fused_ops: dict[str, int] = {}
    layer_norm: LayerNormChoice | None = None  # absent in bundles from before distill measured it
    p50_ms: float | None = None  # batch 1, timed beside the plain graph (plain_p50_ms): the faster one ships
    plain_p50_ms: float | None = None


class Int8Candidate(Int8Try):
    """One INT8 candidate built, measured against the fp32 graph at batch 1 and timed; all fields optional, so that
    records of every version load."""

    source: str | None = None
    static: bool | None = None
    per_channel: bool | None = None
    embeddings: bool | None = None
    excluded_nodes: list[str] = []
    examples: int | None = None  # dev plus unlabelled training rows, pooled
    dev_examples: int | None = None
    prediction_flips: int | None = None
    flip_interval: list[float] | None = None  # 95% exact binomial interval of flip_rate
    dev_flip_rate: float | None = None
    metric: str | None = None
    metric_value: float | None = None
    score_change_max: float | None = None  # regression: |score change| in label units
    score_change_p99: float | None = None
    within_budget: bool | None = None
    padding_passed: bool | None = None
    padding_max_abs_diff: float | None = None
    p50_ms: float | None = None
    size_bytes: int | None = None
    qat: bool = False  # quantisation-aware fine-tuned weights: judged against the teacher, flips only reported
    agreement_with_teacher: float | None = None  # dev, QAT candidates only
    fp32_agreement_with_teacher: float | None = None
    shipped: bool = False
    reason: str | None = None


class OverBudget(Record):
    """The fastest INT8 candidate of a bundle whose candidates all broke the budget, kept to be benchmarked."""

    setting: str
    note: str
    file: str | None = None


class Int8Fidelity(Variant):
    mode: str | None = None
    attempts: list[Int8Try] = []  # written before candidates: the fallback ladder, tried in order
    candidates: list[Int8Candidate] = []
    chosen_setting: str | None = None
    timing: dict[str, Any] = {}
    sensitivity: dict[str, Any] | None = None
    qat: dict[str, Any] | None = None  # the quantisation-aware fine-tuning: its steps and model, or why it did not run
    over_budget: OverBudget | None = None
    size_bytes: int | None = None
    reason: str | None = None

    def chosen(self) -> Int8Try | None:
        """The candidate shipped as ``model.int8.onnx`` (for older records, the first setting that passed)."""
        shipped = next((candidate for candidate in self.candidates if candidate.shipped), None)
        return shipped or next((attempt for attempt in self.attempts if attempt.passed), None)


class Fidelity(Record):
    """One bundle's checks against PyTorch, and what graph optimisation and INT8 kept."""

    source: str | None = None
    opset: int | None = None
    size_bytes: int | None = None
    check_shapes: list[dict[str, Any]] = []
    dev_examples: int | None = None
    max_abs_diff: float
    flip_rate: float | None = None
    agreement_with_pytorch: float | None = None
    agreement_with_teacher: float | None = None
    op_counts: dict[str, int] = {}
    optimized: OptimizedFidelity | None = None
    int8: Int8Fidelity | None = None
