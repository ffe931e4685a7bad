"""Evidence that distillation pays: per-run statistics (seeds, twins, teacher) and ``distill compare`` across runs.

:func:`run_statistics` reads a run's dev-set logits (every seed of every student, its label-only twin, the teacher)
and writes ``RUN/statistics.json``: for every student metric the mean, spread and 95% interval over seeds; the
paired-bootstrap gain over its twin and over the teacher with 95% intervals; and a sentence saying whether the gain
is real, and when it is not, whether the teacher's own lead over the twin left room for one.
:func:`compare_runs` puts several runs side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from distill.bench import deployed_artifact
from distill.errors import StageError
from distill.files import read_json, write_json
from distill.metrics import predictions_from_logits
from distill.report import RunView
from distill.stats import headroom_reading, paired_bootstrap, seed_interval, verdict

STATISTICS_FILE = "statistics.json"
TWIN_SUFFIX = "-twin"


def seed_dirs(student_dir: Path) -> list[Path]:
    """The per-seed run directories of a student trained with several seeds, or ``[student_dir]``."""
    seeds = sorted((p for p in (student_dir / "seeds").glob("*") if (p / "eval.json").is_file()), key=lambda p: p.name)
    return seeds or [student_dir]


def _recipe(directory: Path) -> dict[str, Any]:
    path = directory / "distill.json"
    return read_json(path) if path.is_file() else {}


def _predictions(directory: Path) -> np.ndarray:
    return predictions_from_logits(np.load(directory / "dev_logits.npy"))


def run_statistics(
    run_dir: Path,
    labels: np.ndarray,
    metric_names: list[str],
    resamples: int = 2000,
    seed: int = 0,
    twins: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Statistics of every student in ``run_dir`` against its twin and the teacher; written to ``statistics.json``.

    Args:
        labels: the dev split's gold labels, in the order of every ``dev_logits.npy``.
        metric_names: the task's metrics; the first is the one gains are measured in.
        twins: ``{student: twin}`` for students measured against another student's twin (a recipe variant
            beside the recommended one); any other student's twin is ``NAME-twin``.
    """
    metric = metric_names[0]
    labels = np.asarray(labels)
    teacher_eval = read_json(run_dir / "teacher" / "eval.json")
    teacher_predictions = [_predictions(run_dir / "teacher")]
    student_dirs = sorted(path.parent for path in (run_dir / "students").glob("*/eval.json"))
    predictions = {d.name: [_predictions(path) for path in seed_dirs(d)] for d in student_dirs}
    teacher_metric = teacher_eval["metrics"][metric]
    students: dict[str, Any] = {}
    for student_dir in student_dirs:
        name = student_dir.name
        seeds = seed_dirs(student_dir)
        evaluations = [read_json(path / "eval.json") for path in seeds]
        selected = evaluations[0] if seeds == [student_dir] else read_json(student_dir / "eval.json")
        entry: dict[str, Any] = {
            "objective": evaluations[0].get("objective", "distill"),
            "seeds": [str(_recipe(path).get("seed", path.name)) for path in seeds],
            "selected_seed": selected.get("selected_seed"),
            "metrics": {
                name_: seed_interval([e["metrics"][name_] for e in evaluations]).to_dict()
                for name_ in metric_names
                if all(name_ in e["metrics"] for e in evaluations)
            },
        }
        entry["retained_vs_teacher"] = entry["metrics"][metric]["mean"] / teacher_metric if teacher_metric else None
        versus_teacher = paired_bootstrap(predictions[name], teacher_predictions, labels, metric, resamples, seed=seed)
        entry["vs_teacher"] = {**versus_teacher.to_dict(), "verdict": verdict("the student", versus_teacher)}
        twin = (twins or {}).get(name, f"{name}{TWIN_SUFFIX}")
        if not name.endswith(TWIN_SUFFIX) and twin in predictions:
            gain = paired_bootstrap(predictions[name], predictions[twin], labels, metric, resamples, seed=seed)
            headroom = paired_bootstrap(teacher_predictions, predictions[twin], labels, metric, resamples, seed=seed)
            entry["twin"] = twin
            entry["gain_over_twin"] = {**gain.to_dict(), "verdict": verdict("distillation", gain)}
            entry["teacher_over_twin"] = {**headroom.to_dict(), "reading": headroom_reading(gain, headroom)}
        students[name] = entry
    statistics = {
        "metric": metric,
        "dev_examples": int(labels.shape[0]),
        "bootstrap_resamples": resamples,
        "teacher": {"metrics": teacher_eval["metrics"]},
        "students": students,
        "method": "metric over seeds: mean, sample std, Student-t 95% interval; gains: paired bootstrap over dev "
        "examples of the seed-averaged metric difference, 95% percentile interval",
    }
    write_json(run_dir / STATISTICS_FILE, statistics)
    return statistics


def _points(value: dict[str, Any], scale: float = 100.0) -> str:
    return f"{scale * value['estimate']:+.2f} ({scale * value['low']:+.2f} to {scale * value['high']:+.2f})"


def _summary(value: dict[str, Any]) -> str:
    interval = value["interval"]
    if len(value["values"]) == 1:
        return f"{value['mean']:.4f}"
    return f"{value['mean']:.4f} ± {value['std']:.4f} (95% {interval['low']:.4f} to {interval['high']:.4f})"


def statistics_section(statistics: dict[str, Any]) -> list[str]:
    """The report's "does distillation pay" section: every student beside its twin, with intervals and verdicts."""
    metric = statistics["metric"]
    lines = [
        "## Does distillation pay?",
        "",
        f"Dev {metric} over seeds (mean ± standard deviation, 95% interval of the mean) and paired-bootstrap 95% "
        f"intervals over the {statistics['dev_examples']} dev examples ({statistics['bootstrap_resamples']} "
        "resamples) for the difference against the label-only twin and against the teacher, in points.",
        "",
        f"| student | seeds | dev {metric} | gain over twin | vs teacher | retained |",
        "|---|---|---|---|---|---|",
    ]
    sentences = []
    for name, entry in statistics["students"].items():
        gain = entry.get("gain_over_twin")
        retained = entry.get("retained_vs_teacher")
        lines.append(
            f"| {name} | {', '.join(entry['seeds'])} | {_summary(entry['metrics'][metric])} | "
            f"{_points(gain) if gain else 'n/a'} | {_points(entry['vs_teacher'])} | "
            f"{'?' if retained is None else f'{retained:.1%}'} |"
        )
        if gain:
            sentences.append(f"- `{name}` vs its twin `{entry['twin']}`: {gain['verdict']}.")
            reading = entry.get("teacher_over_twin", {}).get("reading")  # absent in statistics from before it
            if reading:
                sentences.append(f"  Why: {reading}.")
        if entry.get("selected_seed") is not None:
            sentences.append(f"- `{name}`: the exported model is seed {entry['selected_seed']}, the best on dev.")
    return [*lines, "", *sentences, ""]


def _single_request_p50(view: RunView | None, row: dict[str, Any] | None) -> float | None:
    """p50 of ``row`` at the report's single-request point: batch 1 (or the smallest), the longest sequence;
    None for a run without benchmark results."""
    if view is None:
        return None
    point = view.scatter_point()
    latency = view.latency_of(row, *point) if row is not None and point is not None else None
    return None if latency is None else latency["p50_ms"]


def compare_runs(run_dirs: list[Path]) -> dict[str, Any]:
    """One table across runs: teacher, every student and twin, with intervals, deployed latency and size."""
    rows = []
    for run_dir in run_dirs:
        statistics_path, results_path = run_dir / STATISTICS_FILE, run_dir / "bench" / "results.json"
        if not statistics_path.is_file():
            raise StageError(
                f"{statistics_path} does not exist; run `distill report` (or `distill run`) on {run_dir} first"
            )
        statistics = read_json(statistics_path)
        # a run without benchmark results (seed runs merged by benchmarks/merge_seed_runs.py) compares on accuracy
        view = RunView(read_json(results_path)) if results_path.is_file() else None
        metric = statistics["metric"]
        teacher = view.teacher if view else None  # its PyTorch row
        rows.append(
            {
                "run": str(run_dir),
                "model": "teacher",
                "metric": metric,
                "value": statistics["teacher"]["metrics"][metric],
                "artifact": "pytorch fp32" if view else None,
                "p50_ms": _single_request_p50(view, teacher),
                "size_mb": teacher["size_bytes"] / 1e6 if teacher else None,
            }
        )
        for name, entry in statistics["students"].items():
            deployed = deployed_artifact(view.results["artifacts"], name) if view else None
            rows.append(
                {
                    "run": str(run_dir),
                    "model": name,
                    "metric": metric,
                    "value": entry["metrics"][metric]["mean"],
                    "seeds": entry["seeds"],
                    "summary": entry["metrics"][metric],
                    "gain_over_twin": entry.get("gain_over_twin"),
                    "vs_teacher": entry["vs_teacher"],
                    "artifact": f"onnx {deployed['precision']}" if deployed else None,
                    "p50_ms": _single_request_p50(view, deployed),
                    "size_mb": deployed["size_bytes"] / 1e6 if deployed else None,
                }
            )
    return {"rows": rows}


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def comparison_markdown(comparison: dict[str, Any]) -> str:
    lines = [
        "| run | model | dev metric (mean ± sd, 95% interval) | gain over twin, points (95%) "
        "| vs teacher, points (95%) | deployed artifact | p50 ms (b1, longest seq) | size MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in comparison["rows"]:
        value = _summary(row["summary"]) if "summary" in row else f"{row['value']:.4f}"
        gain = row.get("gain_over_twin")
        versus = row.get("vs_teacher")
        lines.append(
            f"| {Path(row['run']).name} | {row['model']} | {row['metric']} {value} | "
            f"{_points(gain) if gain else ''} | {_points(versus) if versus else ''} | {row['artifact'] or 'n/a'} | "
            f"{_number(row['p50_ms'], 2)} | {_number(row['size_mb'], 1)} |"
        )
    return "\n".join(lines) + "\n"


def write_comparison(run_dirs: list[Path], out: Path | None) -> str:
    """Compare ``run_dirs``; write ``OUT.md`` and ``OUT.json`` when ``out`` is given. Returns the Markdown."""
    comparison = compare_runs(run_dirs)
    markdown = comparison_markdown(comparison)
    if out is not None:
        from distill.files import write_text

        write_json(out.with_suffix(".json"), comparison)
        write_text(out.with_suffix(".md"), markdown)
    return markdown
