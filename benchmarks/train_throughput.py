"""Training throughput: samples per second and peak memory per training mode, each in a fresh process.

Usage:
    python benchmarks/train_throughput.py --teacher runs/sst2-full/teacher --out benchmarks/results/train_throughput \
        [--examples 4096] [--steps 60] [--precision fp32 bf16] [--processes 1 2]

Modes (one process each, one after another, so peaks and timings do not mix):
- ``teacher_finetune``: the teacher on hard labels (what teacher fine-tuning costs per step);
- ``student_labels``: a 3-layer teacher-width student on hard labels (the label-only twin);
- ``student_kd_online`` / ``student_kd_cached``: the same student with logit KD (alpha_cos 0), the teacher run
  every step vs its logits read from the cache (the cache is filled before timing starts);
- ``student_distilbert``: KD + CE + cosine on hidden states (the teacher must run online);
- ``tinybert_stage1``: a 4-layer hidden-312 student on embeddings, hidden states and attention scores.
Samples per second are Trainer's ``train_samples_per_second`` over the run of ``--steps`` steps (loading,
tokenising and filling the logit cache are outside it). Peak memory is the process's maximum resident set size (with
several processes: the largest rank's and the sum over ranks). With ``--processes N`` > 1 a mode runs as N
data-parallel ranks (distill's launcher, DDP over gloo on CPU), the global batch staying 32 and each rank getting
``cores / N`` threads. Host CPU flags and versions are recorded.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

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

    from distill import distributed
    from distill.cache import with_teacher_logits
    from distill.config import DataConfig, TinyBertStudentConfig, TrainingConfig
    from distill.data import load_task_data, tokenize
    from distill.mapping import select_layers
    from distill.objective import DistilBertObjective, IntermediateObjective, LabelObjective
    from distill.students.attention import SCORES_ATTENTION, ProjectedStudent
    from distill.students.tinybert import build_tinybert_student
    from distill.students.truncate import build_distilbert_student
    from distill.train import train_model

    distributed.init_from_environment()
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
    rss_mb = distributed.gather_rows(np.array([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]))
    distributed.leave()
    return {
        "mode": mode,
        "precision_requested": precision,
        "precision_used": result.precision,
        "steps": steps,
        "batch_size": 32,
        "max_length": 64,
        "train_runtime_s": summary["train_runtime"],
        "samples_per_second": summary["train_samples_per_second"],
        "processes": distributed.world_size(),
        "peak_rss_mb": float(rss_mb.max()),
        "peak_rss_mb_all_ranks": float(rss_mb.sum()),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True, help="a fine-tuned teacher directory")
    parser.add_argument("--out", type=Path, help="output path without suffix (writes .json and .md)")
    parser.add_argument("--examples", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--processes", nargs="+", type=int, default=[1], help="process counts to measure")
    parser.add_argument("--mode", choices=MODES, help="internal: run one mode in this process and print JSON")
    parser.add_argument("--ranks", type=int, help="internal: run --mode as this many data-parallel ranks")
    args = parser.parse_args()
    if args.mode and args.ranks:
        from distill.distributed import launch

        at = sys.argv.index("--ranks")
        launch(sys.argv[:at] + sys.argv[at + 2 :], args.ranks)  # the same command, run by each rank
        return
    if args.mode:
        print("RESULT " + json.dumps(run_mode(args.mode, args.teacher, args.examples, args.steps, args.precision[0])))
        return
    from distill.bench import host_info, library_versions
    from distill.files import write_json, write_text

    rows = []
    for processes in args.processes:
        for precision in args.precision:
            for mode in MODES:
                command = [sys.executable, __file__, "--teacher", str(args.teacher), "--mode", mode]
                command += ["--examples", str(args.examples), "--steps", str(args.steps), "--precision", precision]
                if processes > 1:
                    command += ["--ranks", str(processes)]
                out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
                row = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
                rows.append(row)
                print(json.dumps(row), flush=True)
    baseline = {
        (r["processes"], r["precision_requested"]): r["samples_per_second"]
        for r in rows
        if r["mode"] == "student_labels"
    }
    one_process = {(r["mode"], r["precision_requested"]): r["samples_per_second"] for r in rows if r["processes"] == 1}
    fp32 = {(r["mode"], r["processes"]): r["samples_per_second"] for r in rows if r["precision_requested"] == "fp32"}
    for row in rows:
        row["time_per_sample_vs_student_labels"] = (
            baseline[row["processes"], row["precision_requested"]] / row["samples_per_second"]
        )
        row["speedup_vs_one_process"] = row["samples_per_second"] / one_process.get(
            (row["mode"], row["precision_requested"]), float("nan")
        )
        row["speedup_vs_fp32"] = row["samples_per_second"] / fp32.get((row["mode"], row["processes"]), float("nan"))
    result = {
        "command": " ".join(["python", *sys.argv]),
        "host": host_info(),
        "versions": library_versions(),
        "rows": rows,
    }
    lines = [
        "# Training throughput",
        "",
        f"Command: `{result['command']}`  ",
        f"Host: {result['host']['cpu']}, {result['host']['available_cores']} cores, flags "
        f"{', '.join(result['host']['cpu_flags'])}; global batch 32, max_length 64.",
        "",
        "| mode | processes x threads | precision asked | precision used | samples/s | time per sample vs label-only "
        "student | speed-up vs 1 process | speed-up vs fp32 | peak RSS (MB), largest rank / all ranks |",
        "|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['mode']} | {r['processes']} x {r['threads']} | {r['precision_requested']} | "
            f"{r['precision_used'].split(':')[0].split(' ')[0]} | {r['samples_per_second']:.1f} | "
            f"{r['time_per_sample_vs_student_labels']:.2f}x | {r['speedup_vs_one_process']:.2f}x | "
            f"{r['speedup_vs_fp32']:.2f}x | {r['peak_rss_mb']:.0f} / {r['peak_rss_mb_all_ranks']:.0f} |"
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
