"""Merge runs that share one teacher (one seed each, or several) into one run directory; write its statistics.

``benchmarks/gpu_evidence.sh`` trains each seed of a config as its own run (``--set 'seeds=[K]'``, the same teacher
through ``teacher.source``), several at once on one GPU. This script lays their dev-set results out as one
several-seed run would (``students/NAME/seeds/K``, the best seed copied to ``students/NAME``) and runs
:func:`distill.report.statistics.run_statistics` on it, so the statistics are the ones ``distill run`` reports.

    python benchmarks/merge_seed_runs.py --out runs/evidence RUN[:SUFFIX] [RUN[:SUFFIX] ...]
        [--pair STUDENT=TWIN] --data-validation ../shared/data/glue/SST-2/dev.tsv

``RUN:SUFFIX`` appends SUFFIX to the names of that run's students (a recipe-search variant beside the recommended
recipe); ``--pair STUDENT=TWIN`` measures a student without a twin of its own against another student's twin (same
architecture, initialisation and budget). Writes OUT/statistics.json and OUT/statistics.md.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from distill.config import load_config
from distill.data import load_task_data
from distill.files import read_json, write_json
from distill.layout import seed_dirs
from distill.report.statistics import run_statistics, statistics_section
from distill.students.stage import select_best_seed

RESULT_FILES = ("eval.json", "dev_logits.npy", "distill.json")


def merge(runs: list[tuple[Path, str]], out: Path) -> dict[str, list[int]]:
    """Copy every run's teacher (the first) and students' dev results into ``out``; returns the seeds per student."""
    if out.exists():
        shutil.rmtree(out)
    (out / "teacher").mkdir(parents=True)
    for name in ("eval.json", "dev_logits.npy"):
        shutil.copy2(runs[0][0] / "teacher" / name, out / "teacher" / name)
    seeds: dict[str, list[int]] = {}
    for run, suffix in runs:
        for student in sorted((run / "students").glob("*/eval.json")):
            name = student.parent.name if not suffix else _renamed(student.parent.name, suffix)
            for source in seed_dirs(student.parent):  # a run of several seeds brings each of them
                seed = int(read_json(source / "distill.json")["seed"])
                target = out / "students" / name / "seeds" / str(seed)
                if target.exists():
                    raise SystemExit(f"{name} seed {seed} comes from two runs; give one of them a :SUFFIX")
                target.mkdir(parents=True)
                for file in RESULT_FILES:
                    shutil.copy2(source / file, target / file)
                seeds.setdefault(name, []).append(seed)
    return {name: sorted(values) for name, values in seeds.items()}


def _renamed(name: str, suffix: str) -> str:
    base, twin, _ = name.partition("-twin")
    return f"{base}{suffix}{'-twin' if twin else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="per-seed run directories, RUN or RUN:SUFFIX")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pair", action="append", default=[], help="STUDENT=TWIN, for a variant without a twin")
    parser.add_argument("--data-validation", type=Path, required=True, help="the dev file the runs were scored on")
    args = parser.parse_args()
    runs = [(Path(spec.split(":")[0]), spec.split(":")[1] if ":" in spec else "") for spec in args.runs]
    config = load_config(  # the runs' own config, scored against this machine's copy of the dev file
        runs[0][0] / "config.yaml",
        [f"data.validation={args.data_validation.resolve()}", f"data.train={args.data_validation.resolve()}"],
    )
    data = load_task_data(config.data, config.task, config.seed)
    seeds = merge(runs, args.out)
    for name, values in seeds.items():
        select_best_seed(args.out / "students" / name, values, data.main_metric)
    labels = np.asarray(data.validation["label"])
    twins = dict(pair.split("=") for pair in args.pair)
    statistics = run_statistics(args.out, labels, data.metrics, seed=config.seed, twins=twins)
    statistics["merged_from"] = [f"{run}{':' + suffix if suffix else ''}" for run, suffix in runs]
    write_json(args.out / "statistics.json", statistics)
    markdown = "\n".join(statistics_section(statistics))
    (args.out / "statistics.md").write_text(markdown, encoding="utf-8")
    print(markdown)


if __name__ == "__main__":
    main()
