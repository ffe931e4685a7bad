"""The report's plots: the main metric against latency, latency bars, and TinyBERT's stage-1 losses; PNG via Agg."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from distill.files import atomic_write
from distill.metrics import metric_name
from distill.report.results import STAGE1_TERMS, RunView

RUNTIME_COLOURS = {"pytorch": "tab:orange", "onnxruntime": "tab:blue"}
LABEL_OFFSETS = (8, -16, 22, -30)
"""Vertical offsets (points) cycled over the scatter plot's labels, so that close points' labels stay legible."""


def save_figure(figure: Figure, path: Path) -> None:
    """Render ``figure`` to PNG with the Agg backend, atomically."""
    FigureCanvasAgg(figure)
    atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=120, bbox_inches="tight"))


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


def plot_accuracy_vs_latency(view: RunView, path: Path) -> None:
    """Main metric against p50 latency at (batch 1, longest seq); bubble area grows with size on disk."""
    point = view.results.single_request_point()
    figure = Figure(figsize=(7, 5))
    axes = figure.add_subplot()
    largest = max(row.size_bytes for row in view.artifacts) or 1
    frontier: list[tuple[float, float]] = []
    for index, row in enumerate(view.artifacts):
        x = view.p50(row, *point) if point else None
        value = row.metrics.get(view.metric)
        if x is None or value is None:
            continue
        axes.scatter(
            x,
            value,
            s=80 + 900 * row.size_bytes / largest,
            alpha=0.6,
            edgecolors="black",
            color=RUNTIME_COLOURS.get(row.runtime, "tab:gray"),
            marker="*" if row.role == "teacher" else "o",
        )
        axes.annotate(
            row.label, (x, value), textcoords="offset points", xytext=(6, LABEL_OFFSETS[index % 4]), fontsize=8
        )
        frontier.append((x, value))
    frontier.sort(key=lambda item: (item[0], -item[1]))
    pareto = [item for index, item in enumerate(frontier) if all(item[1] > other[1] for other in frontier[:index])]
    handles = [
        Line2D([], [], marker="o", linestyle="", color=colour, label=runtime)
        for runtime, colour in RUNTIME_COLOURS.items()
        if any(r.runtime == runtime for r in view.artifacts)
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
    axes.set_ylabel(f"dev {metric_name(view.metric)}")
    axes.margins(0.15)  # room for the largest bubbles and their labels
    title = metric_name(view.metric)
    axes.set_title(f"{title[0].upper()}{title[1:]} vs latency (bubble area ~ size on disk; star = teacher)")
    axes.grid(True, alpha=0.3)
    save_figure(figure, path)


def plot_latency_bars(view: RunView, path: Path) -> None:
    """Grouped bars: p50 latency of every artifact at every (batch, seq) point, on a log scale."""
    points, artifacts = view.points, view.artifacts
    figure = Figure(figsize=(min(16.0, max(6.0, 1.0 + 0.4 * len(points) * len(artifacts))), 4.5))
    axes = figure.add_subplot()
    width = 0.8 / max(len(artifacts), 1)
    for index, row in enumerate(artifacts):
        heights = [view.p50(row, *point) or 0.0 for point in points]
        positions = [group + (index - (len(artifacts) - 1) / 2) * width for group in range(len(points))]
        axes.bar(positions, heights, width=width, label=row.label)
    axes.set_xticks(range(len(points)), [f"b{batch} s{seq}" for batch, seq in points])
    axes.set_yscale("log")
    axes.set_ylabel("p50 latency (ms, log scale)")
    axes.set_title("p50 latency per artifact and (batch, seq)")
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.grid(True, axis="y", alpha=0.3)
    save_figure(figure, path)
