"""A student's gain over its label-only twin pooled over several teachers: is the recipe's gain real on average?

Each merged result directory (``merge_seed_runs.py``'s output) holds one teacher's students and twins over seeds.
A single teacher draw can leave too little room above the twin for a gain to show on 872 dev sentences; pooling
every seed pair of several teacher draws asks whether the recipe gains on average over those draws. The interval
is the paired bootstrap over dev examples (``distill.report.statistics.paired_bootstrap``) with every seed pair in
it, so it treats the teachers as given; it says nothing about teachers not drawn.

    python benchmarks/pooled_gain.py RESULT_DIR [RESULT_DIR ...] --data-validation ../shared/data/glue/SST-2/dev.tsv \\
        [--student tiny4] [--out FILE.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from distill.data import read_table
from distill.files import read_json, write_json
from distill.layout import seed_dirs
from distill.metrics import predictions_from_logits
from distill.report.statistics import paired_bootstrap, verdict


def seed_predictions(student_dir: Path) -> list[np.ndarray]:
    """Dev predictions of every seed of a student (``distill.layout.seed_dirs``: one directory for one seed)."""
    if not (student_dir / "dev_logits.npy").is_file():
        raise SystemExit(f"{student_dir} holds no dev_logits.npy")
    return [predictions_from_logits(np.load(seed / "dev_logits.npy")) for seed in seed_dirs(student_dir)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="merged result directories, one per teacher")
    parser.add_argument("--data-validation", type=Path, required=True, help="the dev TSV the logits were scored on")
    parser.add_argument("--student", default="tiny4", help="student name; its twin is NAME-twin")
    parser.add_argument("--out", type=Path, help="write the per-teacher and pooled intervals here as JSON")
    args = parser.parse_args()

    labels = np.asarray(read_table(args.data_validation)["label"], dtype=np.int64)
    rows, students, twins = [], [], []
    for result in args.results:
        student = seed_predictions(result / "students" / args.student)
        twin = seed_predictions(result / "students" / f"{args.student}-twin")
        if len(student) != len(twin):
            raise SystemExit(f"{result}: {len(student)} student seeds but {len(twin)} twin seeds")
        teacher = read_json(result / "teacher" / "eval.json")["metrics"]["accuracy"]
        gain = paired_bootstrap(student, twin, labels)
        rows.append({"result": str(result), "teacher_accuracy": teacher, "seeds": len(student), **gain.to_dict()})
        print(f"{result} (teacher {teacher:.4f}, {len(student)} seeds): {verdict('distillation', gain)}")
        students += student
        twins += twin
    pooled = paired_bootstrap(students, twins, labels)
    print(f"pooled over {len(args.results)} teachers, {len(students)} seed pairs: {verdict('distillation', pooled)}")
    if args.out:
        write_json(args.out, {"per_teacher": rows, "pooled": {"seed_pairs": len(students), **pooled.to_dict()}})


if __name__ == "__main__":
    main()
