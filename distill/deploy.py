"""The export stage: every model of a run becomes a checked ONNX bundle, optimised and quantised within budget."""

from __future__ import annotations

import shutil
from typing import Any

import click
import numpy as np
from transformers import AutoTokenizer

from distill.config import Config
from distill.data import TaskData, tokenize
from distill.evaluate import MODEL_INPUTS
from distill.export import export_onnx
from distill.files import read_json, write_json
from distill.layout import RunLayout
from distill.optimize import optimize_bundle
from distill.runtime import TEXT_PAIR_KEY


def _kept(variant: dict[str, Any]) -> str:
    if not variant.get("enabled"):
        return "off"
    if not variant.get("kept"):
        return "not kept"
    chosen = next((attempt for attempt in variant.get("attempts", []) if attempt.get("passed")), None)
    return f"kept ({chosen['setting']})" if chosen else "kept"


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
    calibration_rows: list[dict[str, list[int]]] = []
    if export.int8.enabled and export.int8.mode == "static":
        sample = data.train.shuffle(seed=config.seed).select(
            range(min(export.int8.calibration_examples, len(data.train)))
        )
        calibration_rows = tokenize(sample, tokenizer, config.data.max_length).select_columns(columns).to_list()
    labels = np.asarray(data.validation["label"])
    teacher_logits = np.load(layout.teacher_logits)
    summary = {}
    for name in names:
        bundle = layout.bundle(name)
        fidelity = export_onnx(layout.model(name), bundle, export, validation, teacher_logits)
        bundle_config = read_json(bundle / "config.json")
        write_json(bundle / "config.json", {**bundle_config, TEXT_PAIR_KEY: data.has_pair})  # read by predict
        variants = optimize_bundle(bundle, export, dev_rows, labels, data.metrics, calibration_rows)
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
