"""ONNX Runtime graph optimisation and INT8 quantisation of an exported bundle, each held to a fidelity budget, and
the fastest graph within budget shipped.

The fused fp32 graph comes from :mod:`distill.fusion`. Every INT8 candidate of :func:`distill.int8.candidate_specs` is
built, measured against the fp32 graph at batch 1 on the dev split plus unlabelled training rows
(:mod:`distill.fidelity`), padding-checked and timed beside the others; when the fastest breaks the budget, a
per-node sensitivity search (:mod:`distill.sensitivity`) builds one more candidate with only the offending nodes in
fp32. The fastest candidate within budget whose padding check passes is shipped as ``model.int8.onnx``; every
candidate is recorded in ``fidelity.json``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from distill.config import ExportConfig
from distill.fidelity import (
    budget_failures,
    compare_outputs,
    padding_check,
    qat_failures,
    select_fastest,
    teacher_agreement,
    wants_qat,
)
from distill.files import read_json, write_json
from distill.fusion import choose_fp32, fuse_bundle, time_graphs
from distill.int8 import Int8Spec, PreparedGraph, candidate_specs, qat_specs
from distill.layout import FIDELITY_FILE
from distill.runtime import (
    DISABLED_OPTIMIZERS_KEY,
    INT8_FILE,
    OPTIMIZED_FILE,
    OVER_BUDGET_INT8_FILE,
    create_session,
    onnx_logits,
)
from distill.sensitivity import excluded_label, sensitive_nodes


@dataclass
class Candidate:
    """An INT8 candidate on disk, its record for ``fidelity.json`` and its outputs on the pool ``(n, num_labels)``."""

    spec: Int8Spec
    path: Path
    record: dict[str, Any]
    logits: np.ndarray | None = None


@dataclass
class Pool:
    """What every candidate is measured on: the dev rows then unlabelled training rows, and the fp32 outputs."""

    rows: list[dict[str, list[int]]]
    dev_rows: Sequence[dict[str, list[int]]]
    labels: np.ndarray
    metric_names: Sequence[str]
    reference: np.ndarray  # (len(rows), num_labels): the fp32 graph at batch 1
    threads: int | None
    teacher: np.ndarray | None = None  # (len(dev_rows), num_labels): the teacher's dev logits, judging QAT candidates
    disabled_optimizers: tuple[str, ...] = ()  # ONNX Runtime optimisers the bundle's sessions switch off


def measure_candidate(spec: Int8Spec, path: Path, pool: Pool, cfg: ExportConfig) -> Candidate:
    """Measure the INT8 graph at ``path`` on the pool at batch 1, and its padding check on the dev rows."""
    session = create_session(path, pool.threads, pool.disabled_optimizers)
    logits = onnx_logits(session, pool.rows, batch_size=1)  # the deployed batch
    check = compare_outputs(pool.reference, logits, pool.labels, pool.metric_names)
    if spec.qat:  # other weights than the fp32 graph's: held to the teacher, its flips only reported
        assert pool.teacher is not None, "QAT candidates are judged against the teacher's dev logits"
        dev, regression = len(pool.labels), logits.shape[-1] == 1
        check.update(teacher_agreement(pool.teacher, pool.reference[:dev], logits[:dev], regression))
    failures = qat_failures(check, cfg.int8) if spec.qat else budget_failures(check, cfg.int8)
    within_budget = not failures
    names = [node.name for node in session.get_inputs()]
    padding = padding_check(
        lambda feeds: session.run(None, feeds), names, list(pool.dev_rows), atol=cfg.int8.max_score_change
    )
    if not padding["passed"]:
        failures.append(f"padding check failed (max diff {padding['max_abs_diff']:.2e}, {padding['flips']} flips)")
    record = {
        **_describe(spec),
        **check,
        "within_budget": within_budget,
        "padding_passed": padding["passed"],
        "padding_max_abs_diff": padding["max_abs_diff"],
        "passed": not failures,
        "shipped": False,
        "size_bytes": path.stat().st_size,
        "reason": "; ".join(failures) or None,
    }
    return Candidate(spec, path, record, logits)


def _describe(spec: Int8Spec) -> dict[str, Any]:
    return {
        "setting": spec.label,
        "source": spec.source.name,
        "static": spec.static,
        "per_channel": spec.per_channel,
        "embeddings": spec.embeddings,
        "excluded_nodes": list(spec.exclude_nodes),
        "qat": spec.qat,
    }


def _error(spec: Int8Spec, err: Exception) -> Candidate:
    message = str(err).splitlines()[0] if str(err) else repr(err)
    return Candidate(spec, Path(), {**_describe(spec), "passed": False, "shipped": False, "error": message})


Prepare = Callable[[Path], PreparedGraph]
"""A source graph prepared for quantisation, once per source (shape inference of a large graph takes seconds)."""
QatGraphs = Callable[[Path, bool], tuple[Path, Path | None]]
"""Fine-tunes the student through fake quantisation and writes its fp32 graphs (plain, fused or None) under the
given scratch directory, fusing residual LayerNorms when the bool says so (:func:`distill.deploy.qat_graphs`)."""


def build_candidates(
    specs: Sequence[Int8Spec], scratch: Path, pool: Pool, cfg: ExportConfig, prepare: Prepare, prefix: str = "ptq"
) -> list[Candidate]:
    """Build and measure every spec into ``scratch/PREFIX-INDEX.onnx``; a spec that fails to build is recorded with
    its error."""
    candidates = []
    for index, spec in enumerate(specs):
        path = scratch / f"{prefix}-{index}.onnx"
        try:
            prepare(spec.source).quantize(spec, path)
            candidates.append(measure_candidate(spec, path, pool, cfg))
        except Exception as err:  # noqa: BLE001 - a failed candidate is recorded and the others still tried
            candidates.append(_error(spec, err))
    return candidates


def _search_target(candidates: list[Candidate]) -> Candidate | None:
    """The fastest candidate that broke only the fidelity budget and is faster than every candidate that passed."""
    chosen = select_fastest([c.record for c in candidates])
    limit = candidates[chosen].record["p50_ms"] if chosen is not None else float("inf")
    failing = [
        c
        for c in candidates
        if c.logits is not None
        and c.record["padding_passed"]
        and not c.record["within_budget"]
        and c.record.get("p50_ms") is not None
        and c.record["p50_ms"] < limit
    ]
    return min(failing, key=lambda c: c.record["p50_ms"]) if failing else None


def _search(
    target: Candidate, scratch: Path, pool: Pool, cfg: ExportConfig, prepare: Prepare, num_layers: int
) -> tuple[Candidate | None, dict[str, Any]]:
    """Run the sensitivity search on ``target``; returns the candidate it found (measured) and its record."""
    prepared = prepare(target.spec.source)
    search = sensitive_nodes(
        prepared,
        target.spec,
        pool.rows,
        pool.reference,
        target.logits,
        num_layers,
        pool.threads,
        pool.disabled_optimizers,
    )
    record = {
        "searched": target.spec.label,
        "trials": len(search.trials),
        "rows": min(cfg.int8.sensitivity_examples, len(pool.rows)),
        "excluded_nodes": list(search.excluded),
        "passed_on_search_rows": search.passed,
    }
    if not search.passed or not search.excluded:
        return None, record
    spec = replace(target.spec, label=excluded_label(target.spec, search.excluded), exclude_nodes=search.excluded)
    path = scratch / "candidate-sensitivity.onnx"
    prepared.quantize(spec, path)
    return measure_candidate(spec, path, pool, cfg), record


def _time(
    graphs: dict[str, Path], candidates: list[Candidate], pool: Pool, cfg: ExportConfig, seq: int
) -> dict[str, float]:
    """p50 ms at batch 1 and ``seq`` of every fp32 graph and built candidate, interleaved; candidates by index."""
    built = [(str(index), c.path) for index, c in enumerate(candidates) if c.logits is not None]
    if not built and len(graphs) < 2:
        return {}  # nothing to choose between
    sessions = [(key, path, pool.disabled_optimizers) for key, path in [*graphs.items(), *built]]
    timed = time_graphs(sessions, pool.dev_rows, pool.threads, cfg, seq)
    for index, candidate in enumerate(candidates):
        candidate.record["p50_ms"] = timed.get(str(index))
    return timed


def optimize_bundle(
    bundle_dir: Path,
    cfg: ExportConfig,
    validation: Sequence[dict[str, list[int]]],
    labels: np.ndarray,
    metric_names: Sequence[str],
    calibration: Sequence[dict[str, list[int]]] = (),
    unlabelled: Sequence[dict[str, list[int]]] = (),
    seq_length: int = 128,
    threads: int | None = None,
    keep_over_budget: bool = False,
    teacher_dev: np.ndarray | None = None,
    qat: QatGraphs | None = None,
) -> dict[str, Any]:
    """Add ``model.opt.onnx`` and ``model.int8.onnx`` to an exported bundle when they keep within budget and are
    faster than what they replace.

    Args:
        bundle_dir: an export bundle (``model.onnx``, ``config.json``, ``dev_logits.npy``, ``fidelity.json``).
        validation: the tokenised dev rows (``input_ids``, ``attention_mask``, ``token_type_ids``) in order.
        labels: ``(n,)`` gold dev labels; ``metric_names[0]`` is the metric held to the budget.
        calibration: tokenised training rows that calibrate the static candidates.
        unlabelled: tokenised training rows (not the calibration rows) pooled with dev to count flips.
        seq_length: sequence length of the batch-1 timings that pick the graphs shipped.
        threads: intra-op threads of those timings and measurements (``None``: ONNX Runtime's default).
        keep_over_budget: when no INT8 candidate passes, keep the fastest as ``model.int8.over-budget.onnx`` (for
            the teacher, so that the report shows what quantising it alone would give).
        teacher_dev: ``(n_dev, num_labels)`` teacher dev logits; with ``qat``, judge the QAT candidates.
        qat: builds the quantisation-aware fine-tuned graphs when :func:`wants_qat` (distilled students only).
    Returns:
        ``{"optimized": ..., "int8": ...}``, also merged into the bundle's ``fidelity.json``. Files that failed
        their budget are removed, so the bundle serves only models that passed.
    """
    fp32 = bundle_dir / "model.onnx"
    model_config = json.loads((bundle_dir / "config.json").read_text(encoding="utf-8"))
    record: dict[str, Any] = {"optimized": {"enabled": cfg.optimize}, "int8": {"enabled": cfg.int8.enabled}}
    for stale in (OPTIMIZED_FILE, INT8_FILE, OVER_BUDGET_INT8_FILE):
        (bundle_dir / stale).unlink(missing_ok=True)
    seq = min(seq_length, model_config.get("max_position_embeddings", seq_length))
    optimized_path, disabled = fuse_bundle(
        bundle_dir, cfg, validation, labels, metric_names, model_config, record["optimized"], threads, seq
    )
    model_config.pop(DISABLED_OPTIMIZERS_KEY, None)  # a rerun decides again
    switched_off = {DISABLED_OPTIMIZERS_KEY: list(disabled)} if disabled else {}
    write_json(bundle_dir / "config.json", {**model_config, **switched_off})
    graphs = {"fp32": fp32, **({"fp32-opt": optimized_path} if optimized_path else {})}
    pool = Pool(
        [*validation, *unlabelled], validation, labels, metric_names, np.empty(0), threads, teacher_dev, disabled
    )
    candidates: list[Candidate] = []
    with tempfile.TemporaryDirectory(prefix="distill-candidates-") as scratch_dir, contextlib.ExitStack() as stack:
        scratch, prepared = Path(scratch_dir), {}

        def prepare(source: Path) -> PreparedGraph:
            if source not in prepared:
                prepared[source] = stack.enter_context(PreparedGraph(source, cfg.int8, calibration))
            return prepared[source]

        if cfg.int8.enabled:
            pool.reference = onnx_logits(create_session(fp32, threads, disabled), pool.rows, batch_size=1)
            specs = candidate_specs(cfg.int8, fp32, optimized_path)
            candidates = build_candidates(specs, scratch, pool, cfg, prepare)
        timed = _time(graphs, candidates, pool, cfg, seq)
        target = _search_target(candidates) if cfg.int8.enabled and cfg.int8.sensitivity else None
        if target is not None:
            try:
                found, record["int8"]["sensitivity"] = _search(
                    target, scratch, pool, cfg, prepare, model_config["num_hidden_layers"]
                )
            except Exception as err:  # noqa: BLE001 - the search is an extra; its failure is recorded
                found, record["int8"]["sensitivity"] = None, {"searched": target.spec.label, "error": str(err)}
            if found is not None:
                candidates.append(found)
                timed = _time(graphs, candidates, pool, cfg, seq)  # every graph timed again, side by side
        qat_wanted = cfg.int8.enabled and wants_qat(cfg.int8.qat, [c.record for c in candidates])
        if qat_wanted and qat is not None and teacher_dev is not None:
            record["int8"]["qat"] = _add_qat(qat, candidates, scratch, pool, cfg, prepare, not disabled)
            timed = _time(graphs, candidates, pool, cfg, seq)
        choose_fp32(bundle_dir, timed, record["optimized"], seq)
        if cfg.int8.enabled:
            fastest_fp32 = min(timed.get("fp32", float("inf")), timed.get("fp32-opt", float("inf")))
            _ship_int8(bundle_dir, candidates, record["int8"], keep_over_budget, fastest_fp32)
            record["int8"].update(mode=cfg.int8.mode, examples=len(pool.rows), dev_examples=len(validation))
            fp32_p50 = fastest_fp32 if np.isfinite(fastest_fp32) else None
            record["int8"]["timing"] = {"batch": 1, "seq": seq, "threads": threads, "fp32_p50_ms": fp32_p50}
            record["int8"]["timing"]["iterations"] = cfg.selection_iterations
    fidelity = read_json(bundle_dir / FIDELITY_FILE)
    write_json(bundle_dir / FIDELITY_FILE, {**fidelity, **record})
    return record


def _add_qat(
    qat: QatGraphs,
    candidates: list[Candidate],
    scratch: Path,
    pool: Pool,
    cfg: ExportConfig,
    prepare: Prepare,
    skip_layer_norm: bool,
) -> dict[str, Any]:
    """Fine-tune through fake quantisation, then build and measure the QAT candidates into ``candidates``; returns
    the record of the fine-tuning (or of the error that stopped it: the post-training candidates still stand)."""
    int8 = cfg.int8
    record: dict[str, Any] = {"steps": int8.qat_steps, "learning_rate": int8.qat_learning_rate}
    try:
        plain, fused = qat(scratch, skip_layer_norm)
    except Exception as err:  # noqa: BLE001 - an extra; the post-training candidates are still shipped
        return {**record, "error": str(err).splitlines()[0] if str(err) else repr(err)}
    specs = qat_specs(int8, plain, fused)
    candidates.extend(build_candidates(specs, scratch, pool, cfg, prepare, prefix="qat"))
    return {**record, "candidates": [spec.label for spec in specs]}


def _ship_int8(
    bundle_dir: Path, candidates: list[Candidate], record: dict[str, Any], keep_over_budget: bool, fp32_p50: float
) -> None:
    """Copy the fastest passing candidate to ``model.int8.onnx`` and record every candidate."""
    chosen = select_fastest([c.record for c in candidates])
    if chosen is not None:
        winner = candidates[chosen]
        winner.record["shipped"] = True
        shutil.copyfile(winner.path, bundle_dir / INT8_FILE)
        record.update(kept=True, chosen_setting=winner.spec.label, size_bytes=winner.record["size_bytes"])
        if winner.record["p50_ms"] >= fp32_p50:
            record["reason"] = (
                f"the fastest INT8 graph within budget ({winner.record['p50_ms']:.2f} ms p50) was not faster than "
                f"the fp32 graph ({fp32_p50:.2f} ms) at batch 1"
            )
    else:
        record.update(kept=False, reason="no INT8 candidate kept within the fidelity budget; only fp32 is shipped")
        timed = [c for c in candidates if c.record.get("p50_ms") is not None and c.record.get("padding_passed")]
        if keep_over_budget and timed:
            fastest = min(timed, key=lambda c: c.record["p50_ms"])
            shutil.copyfile(fastest.path, bundle_dir / OVER_BUDGET_INT8_FILE)
            note = f"over budget: {fastest.record['reason']}"
            record["over_budget"] = {"setting": fastest.spec.label, "note": note, "file": OVER_BUDGET_INT8_FILE}
    record["candidates"] = [c.record for c in candidates]
