"""ONNX Runtime graph optimisation and INT8 quantisation of an exported bundle, each held to a fidelity budget.

Optimisation fuses attention, LayerNorm and GELU subgraphs (ORT's BERT optimiser); it is kept only when it flips
at most ``export.optimize_max_flip_rate`` of the dev predictions of the fp32 graph. INT8 is tried with the
configured settings first, then with the fallbacks of :data:`INT8_FALLBACKS` in order, until one keeps the flip
rate against the fp32 graph and the dev-metric drop within budget; if none does, no INT8 model is written and
the record says what was tried.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from distill.config import ExportConfig, Int8Config
from distill.errors import ExportError
from distill.export import op_counts
from distill.files import read_json, write_json
from distill.layout import DEV_LOGITS_FILE, FIDELITY_FILE
from distill.metrics import compute_metrics, predictions_from_logits
from distill.runtime import INT8_FILE, OPTIMIZED_FILE, create_session, onnx_logits

FUSED_OPS = (
    "Attention",
    "MultiHeadAttention",
    "EmbedLayerNormalization",
    "SkipLayerNormalization",
    "LayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "SkipSimplifiedLayerNormalization",
)
QUANTIZABLE_OPS = ("MatMul", "Attention", "Gemm")
INT8_FALLBACKS = (
    "as configured",
    "per-channel weights",
    "fused attention kept in fp32",
    "first and last layers kept in fp32",
    "unoptimised fp32 graph as source",
)
"""The order in which INT8 settings are tried when the fidelity budget is broken."""


@dataclass(frozen=True)
class Int8Attempt:
    """One INT8 setting: where it starts from and what it quantises."""

    label: str
    source: Path
    per_channel: bool
    reduce_range: bool
    exclude_first_last: bool
    exclude_op_types: tuple[str, ...] = ()


def fidelity_against(
    reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray, metric_names: Sequence[str]
) -> dict[str, Any]:
    """How far ``candidate`` logits ``(n, num_labels)`` are from ``reference``: max |diff|, flips, metric change."""
    reference_predictions = predictions_from_logits(reference)
    candidate_predictions = predictions_from_logits(candidate)
    regression = reference.shape[-1] == 1
    main = metric_names[0]
    reference_metric = compute_metrics([main], reference_predictions, labels)[main]
    candidate_metric = compute_metrics([main], candidate_predictions, labels)[main]
    flips = 0 if regression else int((reference_predictions != candidate_predictions).sum())
    return {
        "max_abs_diff": float(np.abs(reference - candidate).max()),
        "flip_rate": flips / len(labels),
        "prediction_flips": flips,
        "metric": main,
        "metric_value": candidate_metric,
        "metric_drop": reference_metric - candidate_metric,
    }


def optimize_graph(source: Path, target: Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """Run ORT's BERT optimiser on ``source`` and save the fused graph to ``target``; returns fused-op counts."""
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        optimized = optimize_model(
            str(source), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0
        )
    except Exception as err:  # the optimiser raises many types; all mean "this graph was not optimised"
        raise ExportError(f"ONNX Runtime's optimiser failed on {source} ({err}); set export.optimize: false") from err
    optimized.save_model_to_file(str(target))
    counts = op_counts(target)
    return {op: counts[op] for op in FUSED_OPS if op in counts}


def _excluded_nodes(path: Path, num_layers: int) -> list[str]:
    """Names of the quantisable nodes in the first and last encoder layers and after the encoder (the head).

    Layer membership comes from exporter scope names (``.../layer.3/...``); fused ``Attention`` nodes, which
    lose their scope, are assigned to layers in graph order.
    """
    graph = onnx.load(str(path), load_external_data=False).graph
    keep = {0, num_layers - 1}
    excluded, attention_index = [], 0
    for node in graph.node:
        if node.op_type not in QUANTIZABLE_OPS:
            continue
        match = re.search(r"layer\.(\d+)", node.name)
        if match is not None:
            layer = int(match.group(1))
        elif node.op_type in ("Attention", "MultiHeadAttention"):
            layer, attention_index = attention_index, attention_index + 1
        else:
            layer = num_layers  # pooler and classifier
        if layer in keep or layer >= num_layers:
            excluded.append(node.name)
    return excluded


class _CalibrationReader:
    """Feeds calibration examples one at a time to ``quantize_static`` (the graph has dynamic axes)."""

    def __init__(self, encodings: Sequence[dict[str, list[int]]], input_names: Sequence[str]) -> None:
        self.rows = iter(
            [
                {name: np.asarray([row[name]], dtype=np.int64) for name in input_names if name in row}
                for row in encodings
            ]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.rows, None)


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def quantize_int8(
    attempt: Int8Attempt,
    target: Path,
    settings: Int8Config,
    num_layers: int,
    calibration: Sequence[dict[str, list[int]]],
) -> None:
    """Write an INT8 copy of ``attempt.source`` to ``target`` (shape inference first: fused graphs need it)."""
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic, quantize_static

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # When symbolic shape inference gives up it dumps its partial model into the current directory, so it
        # runs inside the scratch directory; ONNX's own shape inference suffices for such graphs.
        source = str(attempt.source.resolve())
        with _working_directory(Path(scratch)):
            try:
                quant_pre_process(source, str(prepared), skip_optimization=True)
            except Exception:
                quant_pre_process(source, str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        exclude = _excluded_nodes(prepared, num_layers) if attempt.exclude_first_last else []
        skipped = {*settings.exclude_op_types, *attempt.exclude_op_types}
        op_types = [op for op in QUANTIZABLE_OPS if op not in skipped]
        common = dict(
            per_channel=attempt.per_channel,
            reduce_range=attempt.reduce_range,
            op_types_to_quantize=op_types,
            nodes_to_exclude=exclude,
        )
        if settings.mode == "dynamic":
            quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8, **common)
        else:
            names = [value.name for value in onnx.load(str(prepared), load_external_data=False).graph.input]
            quantize_static(
                str(prepared),
                str(target),
                _CalibrationReader(calibration, names),
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                **common,
            )


def _attempts(settings: Int8Config, optimized: Path | None, fp32: Path) -> list[Int8Attempt]:
    """The settings of :data:`INT8_FALLBACKS` that apply, in order.

    The fused-attention fallback quantises the feed-forward and projection matrices but keeps ORT's fused
    ``Attention`` op (query/key/value projections and scores) in fp32; it applies only to an optimised graph.
    """
    first = Int8Attempt(INT8_FALLBACKS[0], optimized or fp32, settings.per_channel, settings.reduce_range, False)
    attempts = [first]
    if not settings.per_channel:
        attempts.append(replace(first, label=INT8_FALLBACKS[1], per_channel=True))
    weights = attempts[-1]
    if optimized is not None and "Attention" not in settings.exclude_op_types:
        attempts.append(replace(first, label=INT8_FALLBACKS[2], exclude_op_types=("Attention",)))
    attempts.append(replace(weights, label=INT8_FALLBACKS[3], exclude_first_last=True))
    if optimized is not None:
        attempts.append(replace(attempts[-1], label=INT8_FALLBACKS[4], source=fp32))
    return attempts


def optimize_bundle(
    bundle_dir: Path,
    cfg: ExportConfig,
    validation: Sequence[dict[str, list[int]]],
    labels: np.ndarray,
    metric_names: Sequence[str],
    calibration: Sequence[dict[str, list[int]]] = (),
) -> dict[str, Any]:
    """Add ``model.opt.onnx`` and ``model.int8.onnx`` to an exported bundle when they keep within budget.

    Args:
        bundle_dir: an export bundle (``model.onnx``, ``config.json``, ``dev_logits.npy``, ``fidelity.json``).
        validation: the tokenised dev rows (``input_ids``, ``attention_mask``, ``token_type_ids``) in order.
        labels: ``(n,)`` gold dev labels; ``metric_names[0]`` is the metric held to the budget.
        calibration: tokenised train rows, for static INT8.
    Returns:
        ``{"optimized": ..., "int8": ...}``, also merged into the bundle's ``fidelity.json``. Files that failed
        their budget are removed, so the bundle holds only models that passed.
    """
    fp32 = bundle_dir / "model.onnx"
    model_config = json.loads((bundle_dir / "config.json").read_text(encoding="utf-8"))
    reference = np.load(bundle_dir / DEV_LOGITS_FILE)
    record: dict[str, Any] = {"optimized": {"enabled": cfg.optimize}, "int8": {"enabled": cfg.int8.enabled}}
    optimized_path: Path | None = None
    for stale in (OPTIMIZED_FILE, INT8_FILE):
        (bundle_dir / stale).unlink(missing_ok=True)

    if cfg.optimize:
        target = bundle_dir / OPTIMIZED_FILE
        fused = optimize_graph(fp32, target, model_config["num_attention_heads"], model_config["hidden_size"])
        check = fidelity_against(reference, onnx_logits(create_session(target), validation), labels, metric_names)
        kept = check["flip_rate"] <= cfg.optimize_max_flip_rate
        record["optimized"].update(fused_ops=fused, kept=kept, **check)
        if kept:
            optimized_path = target
        else:
            target.unlink()
            record["optimized"]["reason"] = (
                f"flip rate {check['flip_rate']:.2%} exceeds export.optimize_max_flip_rate "
                f"{cfg.optimize_max_flip_rate:.2%}; the unoptimised graph is kept"
            )

    if cfg.int8.enabled:
        target = bundle_dir / INT8_FILE
        tried = []
        for attempt in _attempts(cfg.int8, optimized_path, fp32):
            try:
                quantize_int8(attempt, target, cfg.int8, model_config["num_hidden_layers"], calibration)
                check = fidelity_against(
                    reference, onnx_logits(create_session(target), validation), labels, metric_names
                )
            except Exception as err:  # a failed setting is recorded and the next fallback tried
                tried.append({"setting": attempt.label, "error": str(err).splitlines()[0] if str(err) else repr(err)})
                continue
            passed = check["flip_rate"] <= cfg.int8.max_flip_rate and check["metric_drop"] <= cfg.int8.max_metric_drop
            tried.append(
                {
                    "setting": attempt.label,
                    "source": attempt.source.name,
                    "per_channel": attempt.per_channel,
                    "excluded_first_last": attempt.exclude_first_last,
                    "excluded_op_types": [*cfg.int8.exclude_op_types, *attempt.exclude_op_types],
                    "passed": passed,
                    **check,
                }
            )
            if passed:
                break
        else:
            target.unlink(missing_ok=True)
        record["int8"].update(
            mode=cfg.int8.mode,
            attempts=tried,
            kept=target.is_file(),
            size_bytes=target.stat().st_size if target.is_file() else None,
        )
        if not target.is_file():
            record["int8"]["reason"] = "no INT8 setting kept within the fidelity budget; only fp32 is shipped"

    fidelity = read_json(bundle_dir / FIDELITY_FILE)
    write_json(bundle_dir / FIDELITY_FILE, {**fidelity, **record})
    return record
