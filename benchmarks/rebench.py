"""Redo the export, bench and report stages of a finished run with the current code, keeping its trained models.

Usage:
    python benchmarks/rebench.py CONFIG --run-dir DIR [--set KEY=VALUE ...] [--out benchmarks/results/NAME]

For re-measuring after a change to export, quantisation or benchmarking: the teacher and students are taken as
they are in DIR (adding a config field with a default leaves their fingerprints unchanged), and the three
downstream stages are recomputed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from distill.config import load_config
from distill.pipeline import open_run, stage_bench, stage_export, stage_report
from distill.preflight import resolve_for_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, help="also write the sst2_pipeline.py summary to OUT.json / OUT.md")
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    data = open_run(config, args.run_dir).data
    run = open_run(resolve_for_run(config, data)[0], args.run_dir, data)  # budgets chosen as `distill run` chooses
    for key in ("export", "bench", "report"):
        run.manifest["stages"].pop(key, None)
    run.save_manifest()
    started = time.time()
    for stage in (stage_export, stage_bench, stage_report):
        stage(run)
    if args.out:
        from sst2_pipeline import write_summary  # this folder is on sys.path when run as a script

        write_summary(args.run_dir, args.out, time.time() - started)


if __name__ == "__main__":
    main()
