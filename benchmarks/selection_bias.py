"""Does choosing the teacher on the dev set inflate the student's measured gain over its twin? A split-half check.

``teacher.seeds`` keeps the teacher seed with the best dev score, and the same dev set then scores students and
twins. A student that copies a teacher picked for its luck on those very sentences could look better than it is.
This script splits dev at random into halves A and B, picks the teacher on A alone, and measures the students'
gain over their twins on B alone (paired bootstrap over seeds and B's examples, the code of ``distill``'s report),
then swaps the halves, over several random splits:

    python benchmarks/selection_bias.py --teacher DIR [--teacher DIR ...] --student RUN/students/NAME [...] \\
        --twin RUN/students/NAME-twin [...] --chosen K --data-validation ../shared/data/glue/SST-2/dev.tsv \\
        [--splits 10] [--out FILE.json]

``--teacher`` directories hold each candidate's ``dev_logits.npy`` (``teacher/candidates/seed-K``), in seed order;
``--chosen`` is the index of the teacher the students were distilled from. Students and twins are given one
directory per seed, paired in order. The gain on B is free of the selection only on the splits where A picks the
same teacher as the whole dev set did; the script reports how often that happens and the gain on each B.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from distill.data import read_table
from distill.files import write_json
from distill.metrics import predictions_from_logits
from distill.report.statistics import paired_bootstrap, verdict


def _predictions(directory: Path) -> np.ndarray:
    path = directory / "dev_logits.npy"
    if not path.is_file():
        raise SystemExit(f"{directory} holds no dev_logits.npy")
    return predictions_from_logits(np.load(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, action="append", required=True)
    parser.add_argument("--student", type=Path, action="append", required=True)
    parser.add_argument("--twin", type=Path, action="append", required=True)
    parser.add_argument("--chosen", type=int, required=True, help="index of the teacher the students learnt from")
    parser.add_argument("--data-validation", type=Path, required=True)
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if len(args.student) != len(args.twin):
        raise SystemExit("give one --twin per --student (the same seeds, in the same order)")
    labels = np.asarray(read_table(args.data_validation)["label"], dtype=np.int64)
    teachers = [_predictions(path) for path in args.teacher]
    students = [_predictions(path) for path in args.student]
    twins = [_predictions(path) for path in args.twin]
    rows, lines = [], []
    for split in range(args.splits):
        order = np.random.default_rng(split).permutation(len(labels))
        halves = {"A": order[: len(order) // 2], "B": order[len(order) // 2 :]}
        for pick, score in (("A", "B"), ("B", "A")):
            chosen_on, scored_on = halves[pick], halves[score]
            accuracies = [float((t[chosen_on] == labels[chosen_on]).mean()) for t in teachers]
            picked = int(np.argmax(accuracies))
            interval = paired_bootstrap(
                [s[scored_on] for s in students], [t[scored_on] for t in twins], labels[scored_on]
            )
            rows.append(
                {
                    "split": split,
                    "chosen_on": pick,
                    "teacher_accuracies": accuracies,
                    "picked": picked,
                    "same_as_full_dev": picked == args.chosen,
                    "gain_on_other_half": interval.to_dict(),
                }
            )
            lines.append(
                f"split {split}, teacher chosen on {pick} (accuracies {', '.join(f'{a:.4f}' for a in accuracies)}: "
                f"teacher {picked}), scored on {score}: {verdict('distillation', interval)}"
            )
    same = [row for row in rows if row["same_as_full_dev"]]
    gains = [row["gain_on_other_half"]["estimate"] for row in same]
    excluding = sum(row["gain_on_other_half"]["low"] > 0 for row in same)
    summary = (
        f"{len(same)} of {len(rows)} halves pick teacher {args.chosen}, as the whole dev set did; on the other "
        f"halves the gain over the twins is {100 * min(gains):+.2f} to {100 * max(gains):+.2f} points "
        f"(mean {100 * float(np.mean(gains)):+.2f}), its interval excluding zero on {excluding} of them"
        if same
        else f"no half picks teacher {args.chosen}: the choice on the whole dev set was luck"
    )
    lines.append(summary)
    print("\n".join(lines))
    if args.out:
        write_json(args.out, {"rows": rows, "summary": summary, "report": lines})


if __name__ == "__main__":
    main()
