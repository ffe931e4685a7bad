"""How much headroom an ensemble of fine-tuned teachers would leave above a label-only twin, from dev logits alone.

Issue 7's TinyBERT-style criterion needs the student to beat its label-only twin by more than the paired
interval's half-width (about 1.3 points on SST-2 dev over three seeds), and a student rarely beats its teacher.
This script measures, before anyone spends hours distilling, whether averaging several teachers fine-tuned with
different seeds (the bundled MiniLM-L6, the only teacher available offline) raises the ceiling enough:

    python benchmarks/ensemble_headroom.py --teacher RUN [--teacher RUN ...] --twin STUDENT_DIR [--twin ...] \\
        --data-validation ../shared/data/glue/SST-2/dev.tsv [--out FILE.json]

``RUN`` is a run directory holding ``teacher/dev_logits.npy`` (or a teacher directory itself); ``STUDENT_DIR`` a
twin's directory holding ``dev_logits.npy``. The ensemble averages the teachers' class probabilities. Prints and
optionally writes each teacher's and the ensemble's dev accuracy, and the paired bootstrap differences (the same
code as ``distill``'s report) of the ensemble against the first teacher and against the twins.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from distill.data import read_table
from distill.files import write_json
from distill.metrics import predictions_from_logits
from distill.report.statistics import paired_bootstrap, verdict


def _logits(path: Path) -> np.ndarray:
    for candidate in (path / "teacher" / "dev_logits.npy", path / "dev_logits.npy"):
        if candidate.is_file():
            return np.load(candidate)
    raise SystemExit(f"{path} holds neither teacher/dev_logits.npy nor dev_logits.npy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, action="append", required=True)
    parser.add_argument("--twin", type=Path, action="append", default=[])
    parser.add_argument("--data-validation", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    labels = np.asarray(read_table(args.data_validation)["label"], dtype=np.int64)
    teachers = [_logits(path) for path in args.teacher]
    probabilities = torch.stack([torch.from_numpy(t).float().softmax(-1) for t in teachers]).mean(0).numpy()
    ensemble = probabilities.argmax(-1)
    singles = [predictions_from_logits(t) for t in teachers]
    twins = [predictions_from_logits(_logits(path)) for path in args.twin]
    result: dict = {
        "teachers": {str(p): float((s == labels).mean()) for p, s in zip(args.teacher, singles, strict=True)},
        "ensemble": float((ensemble == labels).mean()),
        "twins": {str(p): float((s == labels).mean()) for p, s in zip(args.twin, twins, strict=True)},
    }
    lines = [f"teacher {p}: {a:.4f}" for p, a in result["teachers"].items()]
    lines.append(f"ensemble of {len(teachers)}: {result['ensemble']:.4f}")
    comparisons = {"ensemble vs first teacher": [singles[0]], **({"ensemble vs twins": twins} if twins else {})}
    for name, others in comparisons.items():
        interval = paired_bootstrap([ensemble], others, labels)
        result[name] = interval.to_dict()
        lines.append(f"{name}: {verdict('the ensemble', interval)}")
    lines += [f"twin {p}: {a:.4f}" for p, a in result["twins"].items()]
    print("\n".join(lines))
    if args.out:
        write_json(args.out, {**result, "report": lines})


if __name__ == "__main__":
    main()
