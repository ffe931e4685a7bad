"""The fused fp32 graph of a bundle: ONNX Runtime's BERT optimiser, the layer-norm fusion measured both ways, and the
fused graph kept only when it keeps its budget and is faster than the plain one.

ORT's BERT optimiser fuses attention, LayerNorm and GELU subgraphs. The fused graph is built twice, with each
residual ``Add`` and its LayerNorm fused into ``SkipLayerNormalization`` and with the two kept apart (ONNX Runtime's
own fusion of them then switched off in the bundle's sessions: :data:`SKIP_LAYER_NORM_FUSION`), and the faster at
batch 1 is kept.
It ships when it flips at most ``export.optimize_max_flip_rate`` of the plain graph's dev predictions and is faster
than the plain graph at batch 1 (:func:`choose_fp32`, once every graph has been timed side by side).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distill.config import ExportConfig
from distill.errors import ExportError
from distill.export import op_counts
from distill.fidelity import compare_outputs
from distill.layout import DEV_LOGITS_FILE
from distill.runtime import OPTIMIZED_FILE, create_session, onnx_logits
from distill.timing import interleaved_p50, latency_inputs

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


SKIP_LAYER_NORM_FUSION = "SkipLayerNormFusion"
"""ONNX Runtime's session-time fusion of a residual ``Add`` and the ``LayerNormalization`` after it into
``SkipLayerNormalization``. On a 2-core AVX-512 EPYC with onnxruntime 1.32 that op took 0.13 ms on 128 x 384 where the
two it replaces took 0.04 ms, 12-14% of an INT8 BERT's batch-1 latency (benchmarks/README.md), so the export stage
measures the fused graph with and without it and records the choice under
:data:`distill.runtime.DISABLED_OPTIMIZERS_KEY`."""


def optimize_graph(
    source: Path, target: Path, num_heads: int, hidden_size: int, skip_layer_norm: bool = True
) -> dict[str, int]:
    """Run ORT's BERT optimiser on ``source`` and save the fused graph to ``target``; returns fused-op counts.

    Args:
        skip_layer_norm: fuse each residual ``Add`` and its LayerNorm into ``SkipLayerNormalization``; otherwise
            they stay two ops (served with :data:`SKIP_LAYER_NORM_FUSION` switched off, or the session fuses them).
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_skip_layer_norm = skip_layer_norm
    try:
        optimized = optimize_model(
            str(source),
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden_size,
            opt_level=0,
            optimization_options=options,
        )
    except Exception as err:  # the optimiser raises many types; all mean "this graph was not optimised"
        raise ExportError(f"ONNX Runtime's optimiser failed on {source} ({err}); set export.optimize: false") from err
    optimized.save_model_to_file(str(target))
    counts = op_counts(target)
    return {op: counts[op] for op in FUSED_OPS if op in counts}


def time_graphs(
    sessions: Sequence[tuple[str, Path, tuple[str, ...]]],
    dev_rows: Sequence[dict[str, list[int]]],
    threads: int | None,
    cfg: ExportConfig,
    seq: int,
) -> dict[str, float]:
    """p50 ms at batch 1 and ``seq`` of each ``(key, graph, optimisers switched off)``, interleaved, on dev tokens."""
    runners = {}
    for key, path, disabled in sessions:
        session = create_session(path, threads, disabled)
        names = [node.name for node in session.get_inputs()]
        runners[key] = ((lambda feeds, session=session: session.run(None, feeds)), names)
    token_pool = np.concatenate([np.asarray(row["input_ids"]) for row in dev_rows])
    feeds = latency_inputs(token_pool, 1, seq, seed=seq)
    return interleaved_p50(runners, feeds, cfg.selection_warmup, cfg.selection_iterations)


def fuse_bundle(
    bundle_dir: Path,
    cfg: ExportConfig,
    validation: Sequence[dict[str, list[int]]],
    labels: np.ndarray,
    metric_names: Sequence[str],
    model_config: dict[str, Any],
    record: dict[str, Any],
    threads: int | None,
    seq: int,
) -> tuple[Path | None, tuple[str, ...]]:
    """Write the fused graph, with residual LayerNorms fused or apart (the faster at batch 1 and ``seq``), and check
    it on dev against the plain graph's logits.

    Returns:
        ``(the fused graph, or None when off or outside budget, the ONNX Runtime optimisers its sessions switch
        off)``.
    """
    if not cfg.optimize:
        return None, ()
    target, apart = bundle_dir / OPTIMIZED_FILE, bundle_dir / f".apart-{OPTIMIZED_FILE}"
    heads, hidden = model_config["num_attention_heads"], model_config["hidden_size"]
    fused = optimize_graph(bundle_dir / "model.onnx", target, heads, hidden)
    apart_ops = optimize_graph(bundle_dir / "model.onnx", apart, heads, hidden, skip_layer_norm=False)
    without = (SKIP_LAYER_NORM_FUSION,)
    timed = time_graphs([("fused", target, ()), ("apart", apart, without)], validation, threads, cfg, seq)
    keep_apart = timed["apart"] < timed["fused"]
    record["layer_norm"] = {
        "kept": "apart" if keep_apart else "fused",
        "fused_p50_ms": timed["fused"],
        "apart_p50_ms": timed["apart"],
    }
    if keep_apart:
        apart.replace(target)
        fused = apart_ops
    else:
        apart.unlink()
    disabled = without if keep_apart else ()
    reference = np.load(bundle_dir / DEV_LOGITS_FILE)
    logits = onnx_logits(create_session(target, disabled_optimizers=disabled), validation)
    check = compare_outputs(reference, logits, labels, metric_names)
    kept = check["flip_rate"] <= cfg.optimize_max_flip_rate
    record.update(fused_ops=fused, kept=kept, **{k: check[k] for k in ("flip_rate", "metric_drop", "max_abs_diff")})
    if kept:
        return target, disabled
    target.unlink()
    record["reason"] = (
        f"flip rate {check['flip_rate']:.2%} exceeds export.optimize_max_flip_rate {cfg.optimize_max_flip_rate:.2%}; "
        "the unoptimised graph is kept"
    )
    return None, ()


def choose_fp32(bundle_dir: Path, timed: dict[str, float], record: dict[str, Any], seq: int) -> None:
    """Keep the fused graph only when it is faster than the plain one at batch 1."""
    if "fp32-opt" not in timed:
        return
    record.update(p50_ms=timed["fp32-opt"], plain_p50_ms=timed["fp32"])
    if timed["fp32-opt"] < timed["fp32"]:
        return
    (bundle_dir / OPTIMIZED_FILE).unlink(missing_ok=True)
    record["kept"] = False
    record["reason"] = (
        f"the fused graph was not faster than the plain one at batch 1, sequence {seq} ({timed['fp32-opt']:.2f} vs "
        f"{timed['fp32']:.2f} ms p50); the plain graph is shipped"
    )
