"""``distill compare``: several runs side by side, from their ``statistics.json`` and ``bench/results.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.errors import StageError
from distill.files import write_json, write_text
from distill.gates import deployed_artifact
from distill.layout import TEACHER, RunLayout
from distill.records import BenchResults, IntervalRecord, SeedSummaryRecord, Statistics
from distill.report.markdown import table
from distill.report.results import as_json, single_request_p50
from distill.report.statistics import points_text, summary_text


def compare_runs(run_dirs: list[Path]) -> dict[str, Any]:
    """One table across runs: teacher, every student and twin, with intervals, deployed latency and size."""
    rows = []
    for run_dir in run_dirs:
        layout = RunLayout(run_dir)
        if not layout.statistics.is_file():
            raise StageError(
                f"{layout.statistics} does not exist; run `distill report` (or `distill run`) on {run_dir} first"
            )
        statistics = Statistics.load(layout.statistics)
        # a run without benchmark results (seed runs merged by benchmarks/merge_seed_runs.py) compares on accuracy
        results = BenchResults.load_optional(layout.results)
        metric = statistics.metric
        teacher = results.teacher_row() if results is not None else None  # its PyTorch row
        rows.append(
            {
                "run": str(run_dir),
                "model": TEACHER,
                "metric": metric,
                "value": statistics.teacher["metrics"][metric],
                "artifact": "pytorch fp32" if results is not None else None,
                "p50_ms": single_request_p50(results, teacher),
                "size_mb": teacher.size_bytes / 1e6 if teacher is not None else None,
            }
        )
        for name, entry in statistics.students.items():
            artifact = deployed_artifact(results, name) if results is not None else None
            rows.append(
                {
                    "run": str(run_dir),
                    "model": name,
                    "metric": metric,
                    "value": entry.metrics[metric].mean,
                    "seeds": entry.seeds,
                    "summary": as_json(entry.metrics[metric]),
                    "gain_over_twin": as_json(entry.gain_over_twin) if entry.gain_over_twin is not None else None,
                    "vs_teacher": as_json(entry.vs_teacher),
                    "artifact": f"onnx {artifact.precision}" if artifact is not None else None,
                    "p50_ms": single_request_p50(results, artifact),
                    "size_mb": artifact.size_bytes / 1e6 if artifact is not None else None,
                }
            )
    return {"rows": rows}


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _interval(value: dict[str, Any] | None) -> str:
    return points_text(IntervalRecord.model_validate(value)) if value else ""


def comparison_markdown(comparison: dict[str, Any]) -> str:
    rows = []
    for row in comparison["rows"]:
        summary = row.get("summary")
        value = summary_text(SeedSummaryRecord.model_validate(summary)) if summary else f"{row['value']:.4f}"
        rows.append(
            [Path(row["run"]).name, row["model"], f"{row['metric']} {value}"]
            + [_interval(row.get("gain_over_twin")), _interval(row.get("vs_teacher")), row["artifact"] or "n/a"]
            + [_number(row["p50_ms"], 2), _number(row["size_mb"], 1)]
        )
    columns = ["run", "model", "dev metric (mean ± sd, 95% interval)", "gain over twin, points (95%)"]
    columns += ["vs teacher, points (95%)", "deployed artifact", "p50 ms (b1, longest seq)", "size MB"]
    return "\n".join(table(columns, rows)) + "\n"


def write_comparison(run_dirs: list[Path], out: Path | None) -> str:
    """Compare ``run_dirs``; write ``OUT.md`` and ``OUT.json`` when ``out`` is given. Returns the Markdown."""
    comparison = compare_runs(run_dirs)
    markdown = comparison_markdown(comparison)
    if out is not None:
        write_json(out.with_suffix(".json"), comparison)
        write_text(out.with_suffix(".md"), markdown)
    return markdown
