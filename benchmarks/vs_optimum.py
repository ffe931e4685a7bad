"""Distill's shipped graphs beside Hugging Face Optimum's, for the same trained models, timed interleaved in one
process and scored on the dev split.

Usage (after `bash benchmarks/vs_optimum.sh RUN_DIR STUDENT OUT`, which exports and quantises with Optimum's CLI in
its own virtual environment and then calls this):
    python benchmarks/vs_optimum.py --run-dir RUN_DIR --student STUDENT --optimum OUT/optimum --out OUT
Without ``--optimum`` it times only the run's own graphs beside the teacher in PyTorch: the acceptance ratios of a run,
measured side by side rather than one artifact after another as ``distill bench`` does.

Every artifact runs at batch 1 on every dev example (accuracy, agreement with the teacher, flips against the same
model's fp32 ONNX graph) and is timed at batch 1 and sequence 128 (dev-set tokens, no padding), interleaved round
after round so that a busy moment slows all of them alike; the whole timing is repeated ``--repeats`` times and the
median of the medians is reported. Writes OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distill.config import load_config
from distill.data import load_task_data, tokenize
from distill.env import available_cores, host_info, library_versions
from distill.evaluate import MODEL_INPUTS
from distill.metrics import agreement, compute_metrics, predictions_from_logits
from distill.runtime import INT8_FILE, OPTIMIZED_FILE, OVER_BUDGET_INT8_FILE, create_session, onnx_logits
from distill.timing import interleaved_p50, latency_inputs


def artifacts(run_dir: Path, student: str, optimum: Path | None) -> dict[str, Path]:
    """Every ONNX graph to compare, by label; files a run did not ship are left out."""
    found: dict[str, Path] = {}
    for name in ("teacher", student):
        bundle = run_dir / "onnx" / name
        for file_name, what in (
            ("model.onnx", "fp32"),
            (OPTIMIZED_FILE, "fp32-opt"),
            (INT8_FILE, "int8"),
            (OVER_BUDGET_INT8_FILE, "int8 over budget"),
        ):
            if (bundle / file_name).is_file():
                found[f"{name} distill {what}"] = bundle / file_name
        for what in ("fp32", "int8") if optimum else ():
            graphs = sorted((optimum / name / what).glob("*.onnx"))
            if graphs:
                found[f"{name} optimum {what}"] = graphs[0]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--optimum", type=Path, help="OUT/optimum from vs_optimum.sh (default: distill's graphs only)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: every core)")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    threads = args.threads or available_cores()
    torch.set_num_threads(threads)

    config = load_config(args.run_dir / "config.yaml")
    data = load_task_data(config.data, config.task)
    teacher_dir = args.run_dir / "teacher"
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    validation = tokenize(data.validation, tokenizer, config.data.max_length)
    columns = [name for name in MODEL_INPUTS if name in validation.column_names]
    rows = validation.select_columns(columns).to_list()
    labels = np.asarray(data.validation["label"])
    regression = data.is_regression
    main_metric = data.main_metric
    teacher_logits = np.load(teacher_dir / "dev_logits.npy")

    graphs = artifacts(args.run_dir, args.student, args.optimum)
    sessions = {label: create_session(path, threads) for label, path in graphs.items()}
    logits = {label: onnx_logits(session, rows, batch_size=1) for label, session in sessions.items()}
    rows_out = []
    for label, path in graphs.items():
        owner = label.split(" ")[0]
        reference = logits.get(f"{owner} distill fp32")
        predictions = predictions_from_logits(logits[label])
        flips = None
        if reference is not None and not regression:
            flips = int((predictions != predictions_from_logits(reference)).sum())
        rows_out.append(
            {
                "artifact": label,
                "file": str(path),
                "size_mb": path.stat().st_size / 1e6,
                main_metric: compute_metrics([main_metric], predictions, labels)[main_metric],
                "agreement_with_teacher": agreement(predictions, predictions_from_logits(teacher_logits), regression),
                "flips_vs_own_fp32": flips,
            }
        )

    token_pool = np.concatenate([np.asarray(row["input_ids"]) for row in rows])
    feeds = latency_inputs(token_pool, 1, args.seq, seed=args.seq)
    runners = {
        label: ((lambda feed, session=session: session.run(None, feed)), [i.name for i in session.get_inputs()])
        for label, session in sessions.items()
    }

    def torch_teacher(feed: dict[str, np.ndarray]) -> object:
        with torch.inference_mode():
            return teacher(**{key: torch.from_numpy(value) for key, value in feed.items()})

    runners["teacher pytorch fp32"] = (torch_teacher, columns)
    repeats = []
    for _ in range(args.repeats):
        repeats.append(interleaved_p50(runners, feeds, warmup=10, iterations=args.iterations))
    p50 = {label: float(np.median([repeat[label] for repeat in repeats])) for label in runners}
    baseline = p50["teacher pytorch fp32"]
    for row in rows_out:
        row["p50_ms"] = p50[row["artifact"]]
        row["speedup_vs_teacher_pytorch"] = baseline / row["p50_ms"]
    rows_out.append({"artifact": "teacher pytorch fp32", "p50_ms": baseline, "speedup_vs_teacher_pytorch": 1.0})

    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "command": f"bash benchmarks/vs_optimum.sh {args.run_dir} {args.student} {args.out}"
        if args.optimum
        else f"python benchmarks/vs_optimum.py --run-dir {args.run_dir} --student {args.student} --out {args.out}",
        "date": time.strftime("%Y-%m-%d"),
        "host": host_info(),
        "versions": library_versions(),
        "protocol": {
            "batch": 1,
            "seq": args.seq,
            "threads": threads,
            "iterations": args.iterations,
            "repeats": args.repeats,
            "dev_examples": len(rows),
        },  # fmt: skip
        "p50_each_repeat": repeats,
        "artifacts": rows_out,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    header = f"| artifact | p50 ms (b1, s{args.seq}) | vs teacher PyTorch | dev {main_metric} | agreement with teacher "
    header += "| flips vs own fp32 ONNX | size MB |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for row in sorted(rows_out, key=lambda r: r["p50_ms"]):
        metric = row.get(main_metric)
        lines.append(
            f"| {row['artifact']} | {row['p50_ms']:.2f} | {row['speedup_vs_teacher_pytorch']:.2f}x | "
            + ("" if metric is None else f"{metric:.4f}")
            + " | "
            + ("" if "agreement_with_teacher" not in row else f"{row['agreement_with_teacher']:.4f}")
            + " | "
            + ("" if row.get("flips_vs_own_fp32") is None else f"{row['flips_vs_own_fp32']} of {len(rows)}")
            + " | "
            + ("" if "size_mb" not in row else f"{row['size_mb']:.1f}")
            + " |"
        )
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
