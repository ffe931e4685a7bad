"""Deployable bundles: a generated model card (README.md) beside each exported model's ONNX files and tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.files import read_json, write_text
from distill.runtime import MODEL_FILES, PREFERRED_MODEL_FILES, best_model_file

PRECISION_FILES = {precision: file_name for file_name, precision in MODEL_FILES.items()}


def _provenance(run_dir: Path, name: str, metric: str) -> list[str]:
    teacher = read_json(run_dir / "teacher" / "eval.json")
    lines = [
        f"- Teacher: `{teacher['source']}`"
        + (f", fine-tuned by distill on {teacher['train_examples']} examples" if teacher["finetuned_here"] else "")
        + f"; dev {metric} {teacher['metrics'][metric]:.4f}."
    ]
    if name == "teacher":
        return lines
    recipe = read_json(run_dir / "students" / name / "distill.json")
    return lines + [f"- {line}" for line in recipe["description"]] + [f"- Seed {recipe['seed']}."]


def model_card(run_dir: Path, name: str, results: dict[str, Any]) -> str:
    """The Markdown model card of bundle ``onnx/NAME``: provenance, files, metrics, latency, hardware, caveats."""
    bundle = run_dir / "onnx" / name
    fidelity = read_json(bundle / "fidelity.json")
    rows = [row for row in results["artifacts"] if row["name"] == name and row["runtime"] == "onnxruntime"]
    teacher_pytorch = next(
        row for row in results["artifacts"] if row["role"] == "teacher" and row["runtime"] == "pytorch"
    )
    metric = results["metric_names"][0]
    host = results["host"]
    lines = [
        f"# {name}: ONNX text classifier made by distill",
        "",
        "## How it was made",
        "",
        *_provenance(run_dir, name, metric),
        "",
        "## Files",
        "",
        "| file | precision | size (MB) | dev " + metric + " | agreement with teacher | padding check |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        check = row.get("padding_check") or {}
        lines.append(
            f"| {PRECISION_FILES.get(row['precision'], '?')} | {row['precision']} | {row['size_bytes'] / 1e6:.1f} | "
            f"{row['metrics'][metric]:.4f} | {row['agreement_with_teacher']:.4f} | "
            f"{'pass' if check.get('passed') else 'FAIL' if check else 'n/a'} |"
        )
    lines += [
        "",
        f"The teacher's PyTorch model scores {teacher_pytorch['metrics'][metric]:.4f} on the same dev split.",
        "",
        "## Latency (p50 ms)",
        "",
        f"Measured on {host['cpu']} ({host['available_cores']} cores; flags {', '.join(host['cpu_flags'])}) "
        f"with {results['protocol']['threads']} thread(s). Ratios hold for this machine only.",
        "",
        "| file | batch | seq | p50 (ms) | teacher PyTorch p50 (ms) | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    teacher_latency = {
        (r["batch"], r["seq"]): r["p50_ms"]
        for r in results["latency"]
        if r["name"] == teacher_pytorch["name"] and r["runtime"] == "pytorch"
    }
    for row in results["latency"]:
        if row["name"] == name and row["runtime"] == "onnxruntime":
            reference = teacher_latency.get((row["batch"], row["seq"]))
            speedup = f"{reference / row['p50_ms']:.2f}x" if reference else "n/a"
            lines.append(
                f"| {PRECISION_FILES.get(row['precision'], '?')} | {row['batch']} | {row['seq']} | "
                f"{row['p50_ms']:.2f} | {reference if reference is None else f'{reference:.2f}'} | {speedup} |"
            )
    default_file = best_model_file(bundle)
    lines += [
        "",
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
        "",
        "## Caveats",
        "",
        f"- `distill predict` uses the fastest file present, here `{default_file}` (order: "
        f"{', '.join(PREFERRED_MODEL_FILES)}); only files that passed their fidelity budget are shipped.",
        f"- ONNX fp32 vs PyTorch: max |logit diff| {fidelity['max_abs_diff']:.1e} on {fidelity['dev_examples']} dev "
        "examples.",
        "- One training run: on a dev split of about 900 examples one run's accuracy has a standard error near "
        "1 point, so small differences between models are within noise.",
    ]
    for key in ("optimized", "int8"):
        reason = fidelity.get(key, {}).get("reason")
        if reason:
            lines.append(f"- {key}: {reason}.")
    return "\n".join(lines) + "\n"


def write_model_cards(run_dir: Path, results: dict[str, Any]) -> list[Path]:
    """Write ``onnx/NAME/README.md`` for every exported bundle holding an ONNX model; returns the paths."""
    paths = []
    for bundle in sorted((run_dir / "onnx").glob("*/fidelity.json")):
        if not any((bundle.parent / name).is_file() for name in PREFERRED_MODEL_FILES):
            continue
        path = bundle.parent / "README.md"
        write_text(path, model_card(run_dir, bundle.parent.name, results))
        paths.append(path)
    return paths
