"""Run a distill config end to end (or reuse a finished run) and summarise it against the acceptance targets.

Usage:
    python benchmarks/sst2_pipeline.py CONFIG --run-dir DIR --out benchmarks/results/NAME [--set KEY=VALUE ...]

Writes NAME.json (every number, the command, host and versions) and NAME.md (the human summary). Wall-clock stage
times come from the run's manifest; latency ratios are taken within the single benchmark run of that directory.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from distill.config import load_config
from distill.files import read_json, write_json, write_text
from distill.pipeline import run_pipeline


def _latency(results: dict, name: str, runtime: str, batch: int, seq: int, precision: str = "fp32") -> float | None:
    for row in results["latency"]:
        if (row["name"], row["runtime"], row["batch"], row["seq"]) == (name, runtime, batch, seq) and row.get(
            "precision", "fp32"
        ) == precision:
            return row["p50_ms"]
    return None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def summarise(run_dir: Path, command: str, wall_seconds: float | None) -> dict:
    """Every acceptance-relevant number of a finished run directory."""
    manifest = read_json(run_dir / "manifest.json")
    results = read_json(run_dir / "bench" / "results.json")
    teacher = read_json(run_dir / "teacher" / "eval.json")
    metric = teacher["main_metric"]
    students = {}
    for eval_path in sorted((run_dir / "students").glob("*/eval.json")):
        record = read_json(eval_path)
        name = record["name"]
        fidelity = read_json(run_dir / "onnx" / name / "fidelity.json")
        teacher_pt = _latency(results, "teacher", "pytorch", 1, 128)
        student_onnx = _latency(results, name, "onnxruntime", 1, 128)
        student_int8 = _latency(results, name, "onnxruntime", 1, 128, "int8")
        twin = run_dir / "students" / f"{name}-twin" / "eval.json"
        twin_metric = read_json(twin)["metrics"][metric] if twin.is_file() else None
        students[name] = {
            metric: record["metrics"][metric],
            "retained_vs_teacher": record["metrics"][metric] / teacher["metrics"][metric],
            "agreement_with_teacher": record["agreement_with_teacher"],
            "parameters": record["parameters"],
            "parameters_vs_teacher": record["parameters"] / record["teacher_parameters"],
            "onnx_max_abs_diff": fidelity["max_abs_diff"],
            "onnx_agreement_with_pytorch": fidelity["agreement_with_pytorch"],
            "label_only_twin": twin_metric,
            "gain_over_twin": None if twin_metric is None else record["metrics"][metric] - twin_metric,
            "p50_ms_b1_s128": {
                "teacher_pytorch": teacher_pt,
                "student_onnx_fp32": student_onnx,
                "student_onnx_int8": student_int8,
            },
            "speedup_onnx_vs_teacher_pytorch_b1_s128": _ratio(teacher_pt, student_onnx),
            "speedup_int8_vs_teacher_pytorch_b1_s128": _ratio(teacher_pt, student_int8),
        }
    return {
        "command": command,
        "run_dir": str(run_dir),
        "wall_seconds": wall_seconds,
        "stage_seconds": {key: entry.get("seconds") for key, entry in manifest["stages"].items()},
        "host": results["host"],
        "versions": results["versions"],
        "teacher": {
            metric: teacher["metrics"][metric],
            "majority_baseline": teacher.get("majority_baseline") or _trivial(teacher.get("baseline") or {}),
            "finetuned_here": teacher["finetuned_here"],
            "train_examples": teacher["train_examples"],
            "dev_examples": teacher["dev_examples"],
        },
        "students": students,
        "teacher_onnx_max_abs_diff": read_json(run_dir / "onnx" / "teacher" / "fidelity.json")["max_abs_diff"],
        "latency": results["latency"],
    }


def _trivial(baseline: dict) -> dict:
    """A teacher record's trivial baseline (eval.json's ``baseline``) in the older ``majority_baseline`` form."""
    return {"label": baseline.get("label"), **baseline.get("metrics", {})}


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def to_markdown(summary: dict) -> str:
    host = summary["host"]
    teacher = summary["teacher"]
    lines = [
        f"# {Path(summary['run_dir']).name}",
        "",
        f"Command: `{summary['command']}`  ",
        f"Machine: {host['cpu']}, {host['available_cores']} cores, flags {', '.join(host['cpu_flags'])}, "
        f"other processes' CPU load before bench {host.get('other_cpu_load_before')} cores  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in summary["versions"].items() if v) + "  ",
        f"Wall time: {summary['wall_seconds'] and round(summary['wall_seconds'])} s; "
        f"per stage (s): {summary['stage_seconds']}",
        "",
        f"Teacher: dev accuracy {teacher['accuracy']:.4f} on {teacher['dev_examples']} sentences "
        f"(majority baseline {teacher['majority_baseline'].get('accuracy', float('nan')):.4f}; fine-tuned here on "
        f"{teacher['train_examples']} sentences: {teacher['finetuned_here']}); ONNX max |diff| "
        f"{summary['teacher_onnx_max_abs_diff']:.2e}",
        "",
        "| student | dev accuracy | retained | gain over twin | agreement | params vs teacher | ONNX max abs diff | "
        "ONNX agreement | p50 b1 s128 teacher PyTorch (ms) | student ONNX fp32 (ms) | speed-up | "
        "student INT8 (ms) | INT8 speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["students"].items():
        lat = row["p50_ms_b1_s128"]
        speedup = row["speedup_onnx_vs_teacher_pytorch_b1_s128"]
        int8 = row["speedup_int8_vs_teacher_pytorch_b1_s128"]
        gain = row["gain_over_twin"]
        lines.append(
            f"| {name} | {row['accuracy']:.4f} | {row['retained_vs_teacher']:.2%} | "
            f"{'n/a' if gain is None else f'{100 * gain:+.2f} points'} | "
            f"{row['agreement_with_teacher']:.4f} | {row['parameters_vs_teacher']:.2%} | "
            f"{row['onnx_max_abs_diff']:.2e} | {row['onnx_agreement_with_pytorch']} | "
            f"{_ms(lat['teacher_pytorch'])} | {_ms(lat['student_onnx_fp32'])} | {speedup and f'{speedup:.2f}x'} | "
            f"{_ms(lat['student_onnx_int8'])} | {int8 and f'{int8:.2f}x'} |"
        )
    return "\n".join(lines) + "\n"


def write_summary(run_dir: Path, out: Path, wall_seconds: float | None) -> None:
    """Summarise ``run_dir`` into ``OUT.json`` and ``OUT.md`` (the command is this process's command line)."""
    summary = summarise(run_dir, " ".join(["python", *sys.argv]), wall_seconds)
    write_json(out.with_suffix(".json"), summary)
    write_text(out.with_suffix(".md"), to_markdown(summary))
    print(to_markdown(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    started = time.time()
    run_pipeline(load_config(args.config, args.overrides), args.run_dir)
    write_summary(args.run_dir, args.out, time.time() - started)


if __name__ == "__main__":
    main()
