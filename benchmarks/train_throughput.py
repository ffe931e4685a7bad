"""Training throughput: samples per second and peak memory per training mode, each in a fresh process.

Usage:
    python benchmarks/train_throughput.py --teacher runs/sst2-full/teacher --out benchmarks/results/train_throughput \
        [--examples 4096] [--steps 60] [--precision fp32 bf16]

Modes (one process each, one after another, so peaks and timings do not mix):
- ``teacher_finetune``: the teacher on hard labels (what teacher fine-tuning costs per step);
- ``student_labels``: a 3-layer teacher-width student on hard labels (the label-only twin);
- ``student_kd_online`` / ``student_kd_cached``: the same student with logit KD (alpha_cos 0), the teacher run
  every step vs its logits read from the cache (the cache is filled before timing starts);
- ``student_distilbert``: KD + CE + cosine on hidden states (the teacher must run online);
- ``tinybert_stage1``: a 4-layer hidden-312 student on embeddings, hidden states and attention scores.
Samples per second are Trainer's ``train_samples_per_second`` over the run of ``--steps`` steps (loading,
tokenising and filling the logit cache are outside it). Peak memory is the process's maximum resident set size.
Host CPU flags and versions are recorded. Only one process is measured: multi-process training is not built yet.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = (
    "teacher_finetune",
    "student_labels",
    "student_kd_online",
    "student_kd_cached",
    "student_distilbert",
    "tinybert_stage1",
)


def run_mode(mode: str, teacher_dir: Path, examples: int, steps: int, precision: str) -> dict:
    """Train ``steps`` steps of ``mode`` in this process and return its measurements."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill.cache import with_teacher_logits
    from distill.config import DataConfig, TinyBertStudentConfig, TrainingConfig
    from distill.data import load_task_data, tokenize
    from distill.mapping import select_layers
    from distill.objective import DistilBertObjective, IntermediateObjective, LabelObjective
    from distill.students import build_distilbert_student
    from distill.tinybert import SCORES_ATTENTION, ProjectedStudent, build_tinybert_student
    from distill.train import train_model

    glue = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue" / "SST-2"
    data = load_task_data(
        DataConfig(train=glue / "train.tsv", validation=glue / "dev.tsv", train_limit=examples, validation_limit=64),
        "sst2",
        0,
    )
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir, attn_implementation="eager").eval()
    train_set = tokenize(data.train, tokenizer, 64)
    validation = tokenize(data.validation, tokenizer, 64)
    torch.manual_seed(0)
    layers = select_layers("uniform", teacher.config.num_hidden_layers, 3)
    objective: object
    model: torch.nn.Module
    use_teacher = True
    select_best = True
    if mode == "teacher_finetune":
        model, objective, use_teacher = teacher, LabelObjective(), False
        teacher = None
    elif mode == "student_labels":
        model, objective, use_teacher = build_distilbert_student(teacher, layers), LabelObjective(), False
    elif mode in ("student_kd_online", "student_kd_cached"):
        model = build_distilbert_student(teacher, layers)
        objective = DistilBertObjective(layer_map=layers, alpha_kd=1.0, alpha_ce=0.0, alpha_cos=0.0)
        if mode == "student_kd_cached":
            train_set, _ = with_teacher_logits(train_set, teacher, teacher_dir, tokenizer, Path(tempfile.mkdtemp()))
    elif mode == "student_distilbert":
        model = build_distilbert_student(teacher, layers)
        objective = DistilBertObjective(layer_map=layers)
    elif mode == "tinybert_stage1":
        spec = TinyBertStudentConfig(name="t", recipe="tinybert")
        tiny_layers = select_layers("uniform", teacher.config.num_hidden_layers, spec.num_layers)
        student, _ = build_tinybert_student(teacher, spec, tiny_layers, 0)
        teacher.set_attn_implementation(SCORES_ATTENTION)
        student.set_attn_implementation(SCORES_ATTENTION)
        model = ProjectedStudent(student, teacher.config.hidden_size)
        objective = IntermediateObjective(layer_map=tiny_layers, student_heads=spec.num_attention_heads)
        select_best = False
    else:
        raise SystemExit(f"unknown mode {mode}; use one of {MODES}")
    training = TrainingConfig(
        epochs=1, max_steps=steps, batch_size=32, learning_rate=5e-5, save_steps=10_000, logging_steps=10_000,
        precision=precision,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as work:
        result = train_model(
            model, train_set, validation, tokenizer, training, Path(work), data.metrics, 0, objective,
            teacher=teacher if use_teacher else None, select_best=select_best,
        )  # fmt: skip
    summary = next(row for row in reversed(result.history) if "train_runtime" in row)
    return {
        "mode": mode,
        "precision_requested": precision,
        "precision_used": result.precision,
        "steps": steps,
        "batch_size": 32,
        "max_length": 64,
        "train_runtime_s": summary["train_runtime"],
        "samples_per_second": summary["train_samples_per_second"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True, help="a fine-tuned teacher directory")
    parser.add_argument("--out", type=Path, help="output path without suffix (writes .json and .md)")
    parser.add_argument("--examples", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--mode", choices=MODES, help="internal: run one mode in this process and print JSON")
    args = parser.parse_args()
    if args.mode:
        print("RESULT " + json.dumps(run_mode(args.mode, args.teacher, args.examples, args.steps, args.precision[0])))
        return
    from distill.bench import host_info, library_versions
    from distill.files import write_json, write_text

    rows = []
    for precision in args.precision:
        for mode in MODES:
            command = [sys.executable, __file__, "--teacher", str(args.teacher), "--mode", mode]
            command += ["--examples", str(args.examples), "--steps", str(args.steps), "--precision", precision]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            row = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
            rows.append(row)
            print(json.dumps(row), flush=True)
    label_only = {r["precision_requested"]: r["samples_per_second"] for r in rows if r["mode"] == "student_labels"}
    for row in rows:
        row["time_per_sample_vs_student_labels"] = label_only[row["precision_requested"]] / row["samples_per_second"]
    result = {
        "command": " ".join(["python", *sys.argv]),
        "host": host_info(),
        "versions": library_versions(),
        "processes": 1,
        "rows": rows,
    }
    lines = [
        "# Training throughput",
        "",
        f"Command: `{result['command']}`  ",
        f"Host: {result['host']['cpu']}, {result['host']['available_cores']} cores, flags "
        f"{', '.join(result['host']['cpu_flags'])}; one process.",
        "",
        "| mode | precision asked | precision used | samples/s | time per sample vs label-only student | "
        "peak RSS (MB) |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['mode']} | {r['precision_requested']} | {r['precision_used'].split(':')[0]} | "
            f"{r['samples_per_second']:.1f} | {r['time_per_sample_vs_student_labels']:.2f}x | {r['peak_rss_mb']:.0f} |"
            for r in rows
        ),
        "",
        *sorted({f"- {r['precision_used']}" for r in rows if ":" in r["precision_used"]}),
    ]
    if args.out:
        write_json(args.out.with_suffix(".json"), result)
        write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
