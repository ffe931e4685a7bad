"""One recipe change measured on the same teacher: a student in a variant run against the same student in a base run.

Both run directories hold the same teacher (the variant's teacher stage copied or skipped) and the student over the
same seeds; the difference is the variant's dev main metric minus the base's, each averaged over its seeds, with the
paired bootstrap over dev examples (``distill.report.statistics.paired_bootstrap``). Used for the loss-term defaults
per task kind (benchmarks/README.md, "Loss terms on augmented small data").

    python benchmarks/variant_gain.py BASE_RUN VARIANT_RUN [--student distil3] [--out FILE.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from pooled_gain import seed_predictions  # the benchmarks directory is on sys.path when run as a script

from distill.config import load_config
from distill.files import write_json
from distill.layout import RunLayout
from distill.manifest import open_run
from distill.metrics import METRICS
from distill.report.statistics import paired_bootstrap, seed_interval, verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="run directory of the base recipe")
    parser.add_argument("variant", type=Path, help="run directory of the changed recipe, same teacher and seeds")
    parser.add_argument("--student", default="distil3")
    parser.add_argument("--out", type=Path, help="also write the result here as JSON")
    args = parser.parse_args()

    config = load_config(RunLayout(args.base).config)
    data = open_run(config, args.base).data
    metric = data.metrics[0]
    labels = np.asarray(data.validation["label"])
    base = seed_predictions(RunLayout(args.base).student(args.student))
    variant = seed_predictions(RunLayout(args.variant).student(args.student))
    if len(base) != len(variant):
        raise SystemExit(f"the runs hold {len(base)} and {len(variant)} seeds of {args.student}; train the same seeds")
    gain = paired_bootstrap(variant, base, labels, metric)
    values = {name: [METRICS[metric](p, labels) for p in runs] for name, runs in (("base", base), ("variant", variant))}
    summary = {name: seed_interval(v) for name, v in values.items()}
    result = {
        "metric": metric,
        "student": args.student,
        **{
            name: {"run": str(run), **summary[name].to_dict()}
            for name, run in (("base", args.base), ("variant", args.variant))
        },
        "gain": gain.to_dict(),
        "verdict": verdict("the change", gain),
    }
    for name in ("base", "variant"):
        print(f"{name}: {metric} " + " / ".join(f"{v:.4f}" for v in values[name]) + f", mean {summary[name].mean:.4f}")
    print(result["verdict"])
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
