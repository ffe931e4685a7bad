"""Deployable bundles: a generated model card (README.md) beside each exported model's ONNX files and tokenizer."""

from __future__ import annotations

from pathlib import Path

from distill.bundle_records import Fidelity
from distill.files import write_text
from distill.layout import RECIPE_FILE, TEACHER, RunLayout
from distill.metrics import metric_name
from distill.records import BenchResults, StudentRecord, TeacherEval
from distill.report.markdown import section
from distill.report.results import PRECISION_FILES, RunView, bundle_names, holds_model
from distill.runtime import (
    DISABLED_OPTIMIZERS_KEY,
    PREFERRED_MODEL_FILES,
    best_model_file,
    bundle_disabled_optimizers,
)


def _provenance(layout: RunLayout, name: str, metric: str) -> list[str]:
    teacher = TeacherEval.load(layout.teacher_eval)
    lines = [
        f"- Teacher: `{teacher.source}`"
        + (f", fine-tuned by distill on {teacher.train_examples} examples" if teacher.finetuned_here else "")
        + f"; dev {metric} {teacher.metrics[metric]:.4f}."
    ]
    if name == TEACHER:
        return lines
    recipe = StudentRecord.load(layout.student(name) / RECIPE_FILE)
    return lines + [f"- {line}" for line in recipe.description] + [f"- Seed {recipe.seed}."]


def _noise(layout: RunLayout, results: BenchResults) -> str:
    """The caveat on one training run's noise, from this dev set's size and metric."""
    error = RunView(layout, results).standard_error()
    if error is None:
        return "- One training run: small differences between models on the dev set are within noise."
    value, examples, how = error
    return (
        f"- One training run: on these {examples} dev examples one model's {metric_name(results.metric)} has a "
        f"standard error near {100 * value:.1f} points ({how}), so smaller differences between models are within noise."
    )


def _session_options(bundle: Path) -> list[str]:
    """How to create the session as distill timed it, when the bundle switches ONNX Runtime optimisers off."""
    disabled = bundle_disabled_optimizers(bundle)
    if not disabled:
        return []
    names = ", ".join(f'"{name}"' for name in disabled)
    return [
        f"Pass `disabled_optimizers=[{names}]` to `InferenceSession` (listed in `config.json` under "
        f"`{DISABLED_OPTIMIZERS_KEY}`): the export stage measured this bundle's graphs faster without them. Without it "
        "the outputs agree to float rounding and the graph runs slower."
    ]


def model_card(run_dir: Path, name: str, results: BenchResults) -> str:
    """The Markdown model card of bundle ``onnx/NAME``: provenance, files, metrics, latency, hardware, caveats."""
    layout = RunLayout(run_dir)
    bundle = layout.bundle(name)
    fidelity = Fidelity.load(layout.fidelity(name))
    rows = [row for row in results.artifacts if row.name == name and row.runtime == "onnxruntime"]
    teacher_pytorch = results.teacher_row()
    metric, host = results.metric, results.host
    files = []
    for row in rows:
        check = row.padding_check
        files.append(
            [PRECISION_FILES.get(row.precision, "?"), row.precision, f"{row.size_bytes / 1e6:.1f}"]
            + [f"{row.metrics[metric]:.4f}", f"{row.agreement_with_teacher:.4f}"]
            + ["n/a" if check is None else "pass" if check.passed else "FAIL"]
        )
    latency = []
    for point in results.latency:
        if point.name == name and point.runtime == "onnxruntime":
            reference = results.p50(teacher_pytorch, point.batch, point.seq)
            latency.append(
                [PRECISION_FILES.get(point.precision, "?"), str(point.batch), str(point.seq), f"{point.p50_ms:.2f}"]
                + [str(reference) if reference is None else f"{reference:.2f}"]
                + [f"{reference / point.p50_ms:.2f}x" if reference else "n/a"]
            )
    default_file = best_model_file(bundle)
    file_columns = ["agreement with teacher", "padding check"]
    latency_columns = ["teacher PyTorch p50 (ms)", "speed-up"]
    machine = (
        f"Measured on {host['cpu']} ({host['available_cores']} cores; flags {', '.join(host['cpu_flags'])}) "
        f"with {results.protocol['threads']} thread(s). Ratios hold for this machine only."
    )
    lines = [
        f"# {name}: ONNX text classifier made by distill",
        "",
        "## How it was made",
        "",
        *_provenance(layout, name, metric),
        "",
        *section("Files", ["file", "precision", "size (MB)", f"dev {metric}"] + file_columns, files),
        f"The teacher's PyTorch model scores {teacher_pytorch.metrics[metric]:.4f} on the same dev split.",
        "",
        *section("Latency (p50 ms)", ["file", "batch", "seq", "p50 (ms)"] + latency_columns, latency, machine),
        "## Use it",
        "",
        "```bash",
        f'distill predict {bundle} "a gripping, beautifully acted film"',
        "```",
        "",
        "```python",
        "from distill.runtime import OnnxClassifier  # onnxruntime + tokenizers only, no torch",
        f'print(OnnxClassifier("{bundle}").predict(["a gripping, beautifully acted film"]))',
        "```",
        "",
        f"Without distill: load `{default_file}` with `onnxruntime.InferenceSession` and `tokenizer.json` with "
        "`tokenizers.Tokenizer.from_file`; feed `input_ids`, `attention_mask` (and `token_type_ids`) as int64 "
        "arrays padded with 0; `logits` come back; `config.json` maps class ids to labels (`id2label`).",
        *_session_options(bundle),
        "",
        "## Caveats",
        "",
        f"- `distill predict` uses the fastest file present, here `{default_file}` (order: "
        f"{', '.join(PREFERRED_MODEL_FILES)}); only files that passed their fidelity budget are shipped.",
        f"- ONNX fp32 vs PyTorch: max |logit diff| {fidelity.max_abs_diff:.1e} on {fidelity.dev_examples} dev "
        "examples.",
        _noise(layout, results),
    ]
    for key, part in (("optimized", fidelity.optimized), ("int8", fidelity.int8)):
        if part is not None and part.reason:
            lines.append(f"- {key}: {part.reason}.")
    layer_norm = fidelity.optimized.layer_norm if fidelity.optimized else None
    if layer_norm is not None and layer_norm.fused_p50_ms and layer_norm.apart_p50_ms:
        lines.append(
            f"- optimized: residual LayerNorms {layer_norm.kept}, the faster at batch 1 ({layer_norm.apart_p50_ms:.2f} "
            f"ms apart, {layer_norm.fused_p50_ms:.2f} ms fused into SkipLayerNormalization)."
        )
    return "\n".join(lines) + "\n"


def model_card_bundles(run_dir: Path) -> list[str]:
    """The bundles that get a model card: every one with its fidelity record and an ONNX model."""
    layout = RunLayout(run_dir)
    return [name for name in bundle_names(layout) if holds_model(layout, name)]


def write_model_cards(run_dir: Path, results: BenchResults) -> list[Path]:
    """Write ``onnx/NAME/README.md`` for every exported bundle holding an ONNX model; returns the paths."""
    layout = RunLayout(run_dir)
    paths = []
    for name in model_card_bundles(run_dir):
        write_text(layout.model_card(name), model_card(run_dir, name, results))
        paths.append(layout.model_card(name))
    return paths
