"""The human view of a run: report.md with teacher-relative tables, fidelity numbers and two plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from distill.bundle import write_model_cards
from distill.errors import StageError
from distill.files import atomic_write, read_json, write_text

RUNTIME_COLOURS = {"pytorch": "tab:orange", "onnxruntime": "tab:blue"}
REPORT_FILE = "report.md"
SCATTER_FILE = "accuracy_vs_latency.png"
BARS_FILE = "latency_bars.png"
STAGE1_FILE = "stage1_losses.png"
LABEL_OFFSETS = (8, -16, 22, -30)
"""Vertical offsets (points) cycled over the scatter plot's labels, so that close points' labels stay legible."""


def _key(row: dict[str, Any]) -> tuple[str, str, str]:
    return row["name"], row["runtime"], row.get("precision", "fp32")


def _label(row: dict[str, Any]) -> str:
    return f"{row['name']} ({row['runtime']}, {row.get('precision', 'fp32')})"


def _read_optional(path: Path) -> dict[str, Any] | None:
    return read_json(path) if path.is_file() else None


def save_figure(figure: Figure, path: Path) -> None:
    """Render ``figure`` to PNG with the Agg backend, atomically."""
    FigureCanvasAgg(figure)
    atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=120, bbox_inches="tight"))


class RunView:
    """The benchmark results of one run, indexed for the report: teacher rows first, then students."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.results = results
        rows = results["artifacts"]
        teacher_rows = [row for row in rows if row["role"] == "teacher"]
        if not any(row["runtime"] == "pytorch" for row in teacher_rows):
            raise StageError("bench/results.json has no teacher PyTorch row; re-run `distill bench`")
        teacher_rows.sort(key=lambda row: row["runtime"] != "pytorch")
        self.artifacts = teacher_rows + [row for row in rows if row["role"] != "teacher"]
        self.teacher = self.artifacts[0]
        self.metric = (results.get("metric_names") or list(self.teacher["metrics"]))[0]
        self.regression = bool(results.get("is_regression", False))
        self.latency = {(*_key(row), row["batch"], row["seq"]): row for row in results["latency"]}
        self.points = sorted({(row["batch"], row["seq"]) for row in results["latency"]})

    def latency_of(self, row: dict[str, Any], batch: int, seq: int) -> dict[str, Any] | None:
        return self.latency.get((*_key(row), batch, seq))

    def scatter_point(self) -> tuple[int, int] | None:
        """Batch 1 (or the smallest batch) at the longest sequence: the single-request latency users feel."""
        if not self.points:
            return None
        batch = min(batch for batch, _ in self.points)
        return batch, max(seq for b, seq in self.points if b == batch)


def _fmt_ratio(value: float | None, suffix: str = "x") -> str:
    return "n/a" if value is None else f"{value:.2f}{suffix}"


def _fmt_agreement(value: float | None, regression: bool) -> str:
    """A share of equal predictions as a percentage; for regression the Pearson correlation that stands in for it."""
    if value is None:
        return "n/a"
    return f"{value:.4f}" if regression else f"{100 * value:.1f}%"


def _header(view: RunView, run_dir: Path) -> list[str]:
    host, versions, protocol = view.results["host"], view.results["versions"], view.results["protocol"]
    flags = ", ".join(host.get("cpu_flags", [])) or "none detected"
    version_text = " · ".join(f"{name} {version}" for name, version in versions.items() if version)
    return [
        f"# Distillation report: {run_dir.name}",
        "",
        f"**Host:** {host['cpu']}, {host['logical_cores']} logical cores "
        + f"({host.get('available_cores', '?')} available), flags: {flags}; {host['platform']}.  ",
        f"**Versions:** {version_text}.  ",
        f"**Latency protocol:** {protocol['threads']} thread(s), {protocol['warmup']} warm-up run(s), then up to "
        + f"{protocol['iterations']} timed runs or {protocol['max_seconds_per_point']:g} s per point (at least 5); "
        + "inputs are full batches of dev-set tokens without padding.",
        "",
    ]


def busy_host(view: RunView) -> list[str]:
    """A warning when other work was loading the CPU as the benchmark started: its latencies are then inflated."""
    host = view.results.get("host", {})
    load, cores = host.get("other_cpu_load_before"), host.get("available_cores") or host.get("logical_cores")
    if load is None or not cores or load <= 0.25 * cores:
        return []
    return [
        f"> **Warning:** other processes were using {load:.2f} of {cores} core(s) when the benchmark started; "
        "they competed for the CPU, so latencies are inflated. Rerun `distill bench` on a quiet machine."
    ]


def slower_students(view: RunView) -> list[str]:
    """A warning line for every student artifact that is not faster than the teacher's PyTorch at batch 1."""
    warnings = []
    for row in view.artifacts:
        if row["role"] != "student":
            continue
        slow = []
        for batch, seq in view.points:
            mine, teacher = view.latency_of(row, batch, seq), view.latency_of(view.teacher, batch, seq)
            if batch == 1 and mine and teacher and mine["p50_ms"] >= teacher["p50_ms"]:
                slow.append(f"seq {seq}: {mine['p50_ms']:.2f} ms vs {teacher['p50_ms']:.2f} ms")
        if slow:
            warnings.append(
                f"> **Warning:** student `{_label(row)}` is not faster than the teacher's PyTorch model "
                f"at batch 1 (p50 at {'; '.join(slow)}); check the thread setting and the student's size."
            )
    return warnings


def _teacher_section(run_dir: Path, view: RunView) -> list[str]:
    lines = ["## Teacher", ""]
    evaluation = _read_optional(run_dir / "teacher" / "eval.json")
    if evaluation is None:
        return [*lines, "No teacher/eval.json in this run.", ""]
    metrics = ", ".join(f"{name} {value:.4f}" for name, value in evaluation.get("metrics", {}).items())
    tuned = "fine-tuned in this run" if evaluation.get("finetuned_here") else "used as given (not fine-tuned here)"
    lines.append(f"`{evaluation.get('source', view.teacher['path'])}`, {tuned}. Dev {metrics}.")
    candidates = evaluation.get("candidates")
    if candidates:
        main = evaluation.get("main_metric", view.metric)
        each = ", ".join(f"seed {c['seed']} {c['metrics'][main]:.4f}" for c in candidates["seeds"])
        lines.append(
            f"Fine-tuned once per seed ({each}); seed {candidates['chosen_seed']} has the best dev {main} and is the "
            "teacher. It was chosen on the same dev set that scores every model here, so its dev score is slightly "
            "optimistic."
        )
    baseline = evaluation.get("majority_baseline") or {}
    if "accuracy" in baseline:
        lines.append(
            f"Majority-class baseline: accuracy {baseline['accuracy']:.4f} (always `{baseline.get('label', '?')}`)."
        )
    return [*lines, ""]


def _artifact_table(view: RunView) -> list[str]:
    teacher_metric = view.teacher["metrics"].get(view.metric)
    lines = [
        "## Artifacts",
        "",
        f"| artifact | role | runtime | precision | {view.metric} | retained vs teacher | agreement with teacher "
        + "| size (MB) | params (M) | size vs teacher | padding check |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in view.artifacts:
        value = row["metrics"].get(view.metric)
        retained = 100 * value / teacher_metric if value is not None and teacher_metric else None
        agree_text = _fmt_agreement(row.get("agreement_with_teacher"), view.regression)
        lines.append(
            f"| {row['name']} | {row['role']} | {row['runtime']} | {row.get('precision', 'fp32')} | "
            f"{'n/a' if value is None else f'{value:.4f}'} | {_fmt_ratio(retained, '%')} | {agree_text} | "
            f"{row['size_bytes'] / 1e6:.2f} | {row['parameters'] / 1e6:.2f} | "
            f"{_fmt_ratio(row['size_bytes'] / view.teacher['size_bytes'] if view.teacher['size_bytes'] else None)} | "
            f"{_fmt_padding(row.get('padding_check'))} |"
        )
    return [*lines, ""]


def _fmt_padding(check: dict[str, Any] | None) -> str:
    if not check:
        return "n/a"
    verdict = "pass" if check["passed"] else f"FAIL ({check['flips']} flips)"
    return f"{verdict}, max diff {check['max_abs_diff']:.1e}"


def _deployment_section(run_dir: Path) -> list[str]:
    """What graph optimisation and INT8 did to each bundle, against the fp32 ONNX graph, and what was tried."""
    records = [(path.parent.name, read_json(path)) for path in sorted((run_dir / "onnx").glob("*/fidelity.json"))]
    records = [(name, record) for name, record in records if "optimized" in record or "int8" in record]
    if not records:
        return []
    lines = [
        "## Optimisation and INT8",
        "",
        "Each variant is compared with its fp32 ONNX graph on the dev split; "
        "a variant outside its budget is not shipped.",
        "",
        "| export | optimised graph | fused ops | flips vs fp32 | INT8 | INT8 setting | flips vs fp32 | metric drop |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for name, record in records:
        optimized, int8 = record.get("optimized", {}), record.get("int8", {})
        fused = ", ".join(f"{op} {count}" for op, count in optimized.get("fused_ops", {}).items()) or "n/a"
        attempts = int8.get("attempts", [])
        chosen = next((a for a in attempts if a.get("passed")), None)
        drop = f"{100 * chosen['metric_drop']:+.2f} pt" if chosen else "n/a"
        lines.append(
            f"| {name} | {'kept' if optimized.get('kept') else 'not kept' if optimized.get('enabled') else 'off'} | "
            f"{fused} | {_fmt_flips(optimized)} | "
            f"{'kept' if int8.get('kept') else 'not kept' if int8.get('enabled') else 'off'} | "
            f"{chosen['setting'] if chosen else 'n/a'} | {_fmt_flips(chosen)} | "
            f"{drop} |"
        )
        for reason in (optimized.get("reason"), int8.get("reason")):
            if reason:
                notes.append(f"- `{name}`: {reason}.")
        if len(attempts) > 1:
            tried = "; ".join(
                f"{a['setting']}: "
                + (
                    a["error"]
                    if "error" in a
                    else f"flips {100 * a['flip_rate']:.2f}%, drop {100 * a['metric_drop']:+.2f} pt"
                )
                for a in attempts
            )
            notes.append(f"- `{name}` INT8 settings tried in order: {tried}.")
    return [*lines, "", *notes, *([""] if notes else [])]


def _fmt_flips(check: dict[str, Any] | None) -> str:
    if not check or "flip_rate" not in check:
        return "n/a"
    return f"{100 * check['flip_rate']:.2f}% (max diff {check['max_abs_diff']:.1e})"


def _latency_table(view: RunView) -> list[str]:
    lines = [
        "## Latency",
        "",
        "Speed-up is the teacher's PyTorch p50 divided by the artifact's p50 at the same batch and sequence length.",
        "",
        "| batch | seq | artifact | runtime | precision | p50 (ms) | p90 (ms) | p99 (ms) | throughput (seq/s) "
        + "| speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for batch, seq in view.points:
        teacher = view.latency_of(view.teacher, batch, seq)
        for row in view.artifacts:
            point = view.latency_of(row, batch, seq)
            if point is None:
                continue
            speedup = teacher["p50_ms"] / point["p50_ms"] if teacher and point["p50_ms"] > 0 else None
            lines.append(
                f"| {batch} | {seq} | {row['name']} | {row['runtime']} | {row.get('precision', 'fp32')} | "
                f"{point['p50_ms']:.2f} | {point['p90_ms']:.2f} | {point['p99_ms']:.2f} | "
                f"{point['throughput_per_s']:.1f} | {_fmt_ratio(speedup)} |"
            )
    return [*lines, ""]


def _replay_section(view: RunView) -> list[str]:
    rows = view.results.get("replay") or []
    if not rows:
        return []
    teacher = {
        row["batch"]: row["sentences_per_s"]
        for row in rows
        if (row["name"], row["runtime"], row["precision"]) == _key(view.teacher)
    }
    lines = [
        "## Dev-set replay",
        "",
        "The whole dev split in its own order and lengths, padded per call: what a service would see.",
        "",
        "| artifact | runtime | precision | batch | sentences/s | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        reference = teacher.get(row["batch"])
        lines.append(
            f"| {row['name']} | {row['runtime']} | {row['precision']} | {row['batch']} | "
            f"{row['sentences_per_s']:.1f} | {_fmt_ratio(row['sentences_per_s'] / reference if reference else None)} |"
        )
    return [*lines, ""]


def _sweep_section(view: RunView) -> list[str]:
    rows = view.results.get("thread_sweep") or []
    if not rows:
        return []
    lines = [
        "## Thread sweep (batch 1)",
        "",
        "| artifact | runtime | precision | seq | threads | p50 (ms) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['name']} | {r['runtime']} | {r['precision']} | {r['seq']} | {r['threads']} | {r['p50_ms']:.2f} |"
        for r in rows
    ]
    return [*lines, ""]


def _students_section(run_dir: Path, view: RunView) -> list[str]:
    evaluations = {path.parent.name: read_json(path) for path in sorted((run_dir / "students").glob("*/eval.json"))}
    if not evaluations:
        return []
    metric = view.metric
    lines = [
        "## Students at the end of training",
        "",
        "Each label-only twin (`NAME-twin`) has its student's architecture, initialisation and number of epochs, "
        "trained on hard labels only. The gain is one run's difference on the dev set; with one seed, a gain under "
        "about 2 points (two standard errors on SST-2's 872 sentences) cannot be told from noise.",
        "",
        "| student | objective | metrics | agreement with teacher | parameters (vs teacher) "
        f"| {metric} gain over twin |",
        "|---|---|---|---|---|---|",
    ]
    for name, evaluation in evaluations.items():
        metrics = ", ".join(f"{key} {value:.4f}" for key, value in evaluation.get("metrics", {}).items())
        agree = _fmt_agreement(evaluation.get("agreement_with_teacher"), view.regression)
        params, teacher_params = evaluation.get("parameters"), evaluation.get("teacher_parameters")
        size = f"{params / 1e6:.2f}M ({params / teacher_params:.0%})" if params and teacher_params else "?"
        twin = evaluations.get(f"{name}-twin")
        gain = "n/a"
        if twin is not None and metric in twin.get("metrics", {}) and metric in evaluation.get("metrics", {}):
            gain = f"{100 * (evaluation['metrics'][metric] - twin['metrics'][metric]):+.2f} points"
        lines.append(f"| {name} | {evaluation.get('objective', 'distill')} | {metrics} | {agree} | {size} | {gain} |")
    for name in evaluations:
        recipe = _read_optional(run_dir / "students" / name / "distill.json") or {}
        augmentation = recipe.get("augmentation")
        if augmentation:
            lines += [
                "",
                f"Augmentation for `{name}`: {augmentation['generated']} copies generated from "
                f"{augmentation['source_examples']} examples ({augmentation['candidates_from']}); "
                f"{augmentation['dropped_disagreeing']} dropped because the teacher labelled them differently "
                f"from their source; {augmentation['kept']} kept.",
            ]
    return [*lines, ""]


def _statistics_section(run_dir: Path) -> list[str]:
    from distill.compare import STATISTICS_FILE, statistics_section

    statistics = _read_optional(run_dir / STATISTICS_FILE)
    return statistics_section(statistics) if statistics else []


STAGE1_TERMS = ("loss", "loss_emb", "loss_hidden", "loss_attention")
"""The stage-1 loss curves drawn in the report: total, embedding, mean hidden-state and mean attention MSE."""


def stage1_logs(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Training-loss records of every TinyBERT student's stage 1, by student name."""
    logs = {}
    for path in sorted((run_dir / "students").glob("*/stage1/logs/train_log.jsonl")):
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        records = [r for r in records if "loss" in r]
        if records:
            logs[path.parents[2].name] = records
    return logs


def plot_stage1_losses(logs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """One panel per stage-1 term, one line per student, loss against training step (log scale)."""
    figure = Figure(figsize=(12, 3.2))
    for index, term in enumerate(STAGE1_TERMS):
        axes = figure.add_subplot(1, len(STAGE1_TERMS), index + 1)
        for name, records in logs.items():
            points = [(r["step"], r[term]) for r in records if term in r]
            if points:
                steps, values = zip(*points, strict=True)
                axes.plot(steps, values, label=name)
        axes.set_title("total" if term == "loss" else term.removeprefix("loss_"), fontsize=9)
        axes.set_xlabel("step", fontsize=8)
        axes.set_yscale("log")
        axes.grid(True, alpha=0.3)
    figure.axes[0].legend(fontsize=8)
    figure.suptitle("TinyBERT stage 1: intermediate-layer losses (training)")
    save_figure(figure, path)


def _stage1_section(run_dir: Path) -> list[str]:
    logs = stage1_logs(run_dir)
    if not logs:
        return []
    plot_stage1_losses(logs, run_dir / "bench" / STAGE1_FILE)
    lines = [
        "## TinyBERT stage 1: intermediate-layer losses",
        "",
        "Mean of the first and of the last 10% of logged training steps.",
        "",
        "| student | term | start | end | change |",
        "|---|---|---|---|---|",
    ]
    for name, records in logs.items():
        tail = max(1, len(records) // 10)
        for term in STAGE1_TERMS:
            values = [r[term] for r in records if term in r]
            if not values:
                continue
            start, end = sum(values[:tail]) / tail, sum(values[-tail:]) / tail
            lines.append(f"| {name} | {term} | {start:.4f} | {end:.4f} | {100 * (end / start - 1):+.1f}% |")
    return [*lines, "", f"![stage-1 losses](bench/{STAGE1_FILE})", ""]


def _fidelity_section(run_dir: Path, view: RunView) -> list[str]:
    records = sorted((run_dir / "onnx").glob("*/fidelity.json"))
    if not records:
        return []
    lines = [
        "## ONNX fidelity",
        "",
        "Logit differences and prediction flips of each ONNX export against its own PyTorch model.",
        "",
        "| export | opset | dev max abs diff | flip rate | agreement with teacher "
        + "| check shapes (batch x seq: max diff) | nodes |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in records:
        record = read_json(path)
        flip = record.get("flip_rate")
        agree = _fmt_agreement(record.get("agreement_with_teacher"), view.regression)
        checks = ", ".join(f"{c['batch']}x{c['seq']}: {c['max_abs_diff']:.2e}" for c in record.get("check_shapes", []))
        nodes = sum(record.get("op_counts", {}).values())
        lines.append(
            f"| {path.parent.name} | {record.get('opset', '?')} | {record.get('max_abs_diff', float('nan')):.2e} | "
            f"{'n/a' if flip is None else f'{100 * flip:.2f}%'} | {agree} | {checks} | {nodes} |"
        )
    return [*lines, ""]


def plot_accuracy_vs_latency(view: RunView, path: Path) -> None:
    """Main metric against p50 latency at (batch 1, longest seq); bubble area grows with size on disk."""
    point = view.scatter_point()
    figure = Figure(figsize=(7, 5))
    axes = figure.add_subplot()
    largest = max(row["size_bytes"] for row in view.artifacts) or 1
    frontier: list[tuple[float, float]] = []
    for index, row in enumerate(view.artifacts):
        latency = view.latency_of(row, *point) if point else None
        value = row["metrics"].get(view.metric)
        if latency is None or value is None:
            continue
        x = latency["p50_ms"]
        axes.scatter(
            x,
            value,
            s=80 + 900 * row["size_bytes"] / largest,
            alpha=0.6,
            edgecolors="black",
            color=RUNTIME_COLOURS.get(row["runtime"], "tab:gray"),
            marker="*" if row["role"] == "teacher" else "o",
        )
        axes.annotate(
            _label(row), (x, value), textcoords="offset points", xytext=(6, LABEL_OFFSETS[index % 4]), fontsize=8
        )
        frontier.append((x, value))
    frontier.sort(key=lambda item: (item[0], -item[1]))
    pareto = [item for index, item in enumerate(frontier) if all(item[1] > other[1] for other in frontier[:index])]
    handles = [
        Line2D([], [], marker="o", linestyle="", color=colour, label=runtime)
        for runtime, colour in RUNTIME_COLOURS.items()
        if any(r["runtime"] == runtime for r in view.artifacts)
    ]
    if len(pareto) > 1:
        pareto_x, pareto_y = zip(*pareto, strict=True)
        handles += axes.plot(pareto_x, pareto_y, linestyle="--", color="gray", linewidth=1, label="Pareto front")
    axes.legend(handles=handles, loc="best", fontsize=8)
    latencies = [x for x, _ in frontier]
    if latencies and min(latencies) > 0 and max(latencies) / min(latencies) > 20:
        axes.set_xscale("log")
    batch, seq = point if point else ("?", "?")
    scale = ", log scale" if axes.get_xscale() == "log" else ""
    axes.set_xlabel(f"p50 latency (ms), batch {batch}, seq {seq}{scale}")
    axes.set_ylabel(f"dev {view.metric}")
    axes.margins(0.15)  # room for the largest bubbles and their labels
    axes.set_title("Accuracy vs latency (bubble area ~ size on disk; star = teacher)")
    axes.grid(True, alpha=0.3)
    save_figure(figure, path)


def plot_latency_bars(view: RunView, path: Path) -> None:
    """Grouped bars: p50 latency of every artifact at every (batch, seq) point, on a log scale."""
    figure = Figure(figsize=(min(16.0, max(6.0, 1.0 + 0.4 * len(view.points) * len(view.artifacts))), 4.5))
    axes = figure.add_subplot()
    width = 0.8 / max(len(view.artifacts), 1)
    for index, row in enumerate(view.artifacts):
        heights = [(view.latency_of(row, *point) or {}).get("p50_ms", 0.0) for point in view.points]
        positions = [group + (index - (len(view.artifacts) - 1) / 2) * width for group in range(len(view.points))]
        axes.bar(positions, heights, width=width, label=_label(row))
    axes.set_xticks(range(len(view.points)), [f"b{batch} s{seq}" for batch, seq in view.points])
    axes.set_yscale("log")
    axes.set_ylabel("p50 latency (ms, log scale)")
    axes.set_title("p50 latency per artifact and (batch, seq)")
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.grid(True, axis="y", alpha=0.3)
    save_figure(figure, path)


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.md`` and the two plots in ``run_dir/bench/`` from the run's JSON files.

    Reads ``bench/results.json`` (required), ``teacher/eval.json``, ``students/*/eval.json`` and
    ``onnx/*/fidelity.json`` (when present). Returns the report's path.
    """
    run_dir = Path(run_dir)
    results_path = run_dir / "bench" / "results.json"
    if not results_path.is_file():
        raise StageError(f"{results_path} does not exist; run `distill bench` on this run directory first")
    view = RunView(read_json(results_path))
    plot_accuracy_vs_latency(view, run_dir / "bench" / SCATTER_FILE)
    plot_latency_bars(view, run_dir / "bench" / BARS_FILE)
    warnings = busy_host(view) + slower_students(view)
    lines = [
        *_header(view, run_dir),
        *([*warnings, ""] if warnings else []),
        *_teacher_section(run_dir, view),
        *_artifact_table(view),
        *_latency_table(view),
        *_replay_section(view),
        *_sweep_section(view),
        *_students_section(run_dir, view),
        *_statistics_section(run_dir),
        *_stage1_section(run_dir),
        *_fidelity_section(run_dir, view),
        *_deployment_section(run_dir),
        "## Plots",
        "",
        f"![accuracy vs latency](bench/{SCATTER_FILE})",
        "",
        f"![p50 latency per artifact](bench/{BARS_FILE})",
        "",
    ]
    report_path = run_dir / REPORT_FILE
    write_text(report_path, "\n".join(lines))
    write_model_cards(run_dir, view.results)
    return report_path
