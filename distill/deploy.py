"""The export stage: every model of a run becomes a checked ONNX bundle, optimised and quantised within budget."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import click
import numpy as np
from transformers import AutoTokenizer

from distill.config import Config, DistilBertStudentConfig, TinyBertStudentConfig
from distill.data import TaskData, tokenize
from distill.env import available_cores
from distill.evaluate import MODEL_INPUTS
from distill.export import export_onnx
from distill.files import read_json, write_json
from distill.fusion import optimize_graph
from distill.layout import TEACHER, RunLayout
from distill.optimize import QatGraphs, optimize_bundle
from distill.runtime import TEXT_PAIR_KEY


def _kept(variant: dict[str, Any]) -> str:
    if not variant.get("enabled"):
        return "off"
    if not variant.get("kept"):
        over = variant.get("over_budget")
        return f"not kept (kept for the report only, {over['note']})" if over else "not kept"
    chosen = variant.get("chosen_setting")
    return f"kept ({chosen})" if chosen else "kept"


def _training_rows(config: Config, data: TaskData, tokenizer: Any, columns: list[str]) -> tuple[list, list]:
    """Tokenised training rows: ``(calibration rows for static INT8, distinct rows pooled with dev to count flips)``."""
    int8 = config.export.int8
    if not int8.enabled:
        return [], []
    wanted = min(int8.calibration_examples + int8.fidelity_examples, len(data.train))
    sample = data.train.shuffle(seed=config.seed).select(range(wanted))
    rows = tokenize(sample, tokenizer, config.data.max_length).select_columns(columns).to_list()
    return rows[: int8.calibration_examples], rows[int8.calibration_examples :]


def qat_graphs(
    config: Config,
    data: TaskData,
    layout: RunLayout,
    spec: DistilBertStudentConfig | TinyBertStudentConfig,
    validation: Any,
    teacher_logits: np.ndarray,
) -> QatGraphs:
    """What builds a distilled student's quantisation-aware graphs: fine-tune it (:func:`distill.qat.finetune_qat`,
    reused when done), export it like any model and fuse it like the fp32 graph."""

    def build(scratch: Path, skip_layer_norm: bool) -> tuple[Path, Path | None]:
        from distill.qat import finetune_qat

        click.echo(f"[export] {spec.name}: quantisation-aware fine-tuning, {config.export.int8.qat_steps} steps")
        layout_dir = layout.student(spec.name)
        model_dir = finetune_qat(config, spec, data, layout_dir, layout.teacher, layout.cache)
        bundle = scratch / "qat-bundle"
        export_onnx(model_dir, bundle, config.export, validation, teacher_logits)
        if not config.export.optimize:
            return bundle / "model.onnx", None
        model_config = read_json(bundle / "config.json")
        fused = scratch / "qat.opt.onnx"
        heads, hidden = model_config["num_attention_heads"], model_config["hidden_size"]
        optimize_graph(bundle / "model.onnx", fused, heads, hidden, skip_layer_norm)
        return bundle / "model.onnx", fused

    return build


def export_models(config: Config, data: TaskData, layout: RunLayout, names: list[str]) -> dict[str, Any]:
    """Export each of ``names`` (the teacher and students) to ``layout.bundle(NAME)``, check it against PyTorch on
    the dev split, then add the optimised and INT8 graphs that keep within the fidelity budget.

    Prints one line per bundle; returns ``{name: summary}`` for the manifest.
    """
    export = config.export
    for staging in layout.onnx.glob(".*.tmp"):  # left by an export that was killed: never a finished bundle
        shutil.rmtree(staging, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(layout.teacher)
    validation = tokenize(data.validation, tokenizer, config.data.max_length)
    columns = [name for name in MODEL_INPUTS if name in validation.column_names]
    dev_rows = validation.select_columns(columns).to_list()
    calibration_rows, unlabelled_rows = _training_rows(config, data, tokenizer, columns)
    seq_length = export.selection_seq_length or max(config.bench.seq_lengths)
    threads = config.bench.threads or available_cores()
    labels = np.asarray(data.validation["label"])
    teacher_logits = np.load(layout.teacher_logits)
    summary = {}
    distilled = {spec.name: spec for spec in config.students if spec.objective == "distill"}
    for name in names:
        bundle = layout.bundle(name)
        fidelity = export_onnx(layout.model(name), bundle, export, validation, teacher_logits)
        bundle_config = read_json(bundle / "config.json")
        write_json(bundle / "config.json", {**bundle_config, TEXT_PAIR_KEY: data.has_pair})  # read by predict
        variants = optimize_bundle(
            bundle,
            export,
            dev_rows,
            labels,
            data.metrics,
            calibration_rows,
            unlabelled_rows,
            seq_length=seq_length,
            threads=threads,
            keep_over_budget=name == TEACHER,  # the no-distillation baseline is always benchmarked
            teacher_dev=teacher_logits,
            qat=qat_graphs(config, data, layout, distilled[name], validation, teacher_logits)
            if name in distilled
            else None,
        )
        summary[name] = {
            "max_abs_diff": fidelity["max_abs_diff"],
            "agreement_with_pytorch": fidelity["agreement_with_pytorch"],
            "optimized_kept": variants["optimized"].get("kept"),
            "int8_kept": variants["int8"].get("kept"),
        }
        agreement = fidelity["agreement_with_pytorch"]
        agrees = "" if agreement is None else f", {100 * agreement:.1f}% of dev predictions equal"
        click.echo(
            f"[export] {name}: ONNX max |logit diff| vs PyTorch {fidelity['max_abs_diff']:.1e}{agrees}; "
            f"optimised graph {_kept(variants['optimized'])}; INT8 {_kept(variants['int8'])}"
        )
    return summary
