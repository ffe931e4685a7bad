"""The human view of a run: report.md with teacher-relative tables and plots, statistics, model cards.

- :func:`write_report`: ``RUN/report.md``, the plots in ``RUN/bench/`` and every bundle's model card.
- :func:`distill.report.statistics.run_statistics`: ``RUN/statistics.json`` (needs the dev labels).
- :func:`report_outputs`: every file the report stage writes, for the pipeline to declare.
- :mod:`distill.report.compare`: ``distill compare`` across runs.
"""

from __future__ import annotations

from pathlib import Path

from distill.files import write_text
from distill.layout import BARS_FILE, SCATTER_FILE, STAGE1_FILE, RunLayout
from distill.report.latency import latency_section, replay_section, side_by_side_section, sweep_section
from distill.report.markdown import (
    artifact_section,
    budget_section,
    busy_host,
    deployment_section,
    fidelity_section,
    header,
    plots_section,
    slower_students,
    stage1_section,
    students_section,
    teacher_section,
    trivial_students,
)
from distill.report.model_card import write_model_cards
from distill.report.plots import plot_accuracy_vs_latency, plot_latency_bars, plot_stage1_losses
from distill.report.results import RunView, holds_model, stage1_logs
from distill.report.statistics import statistics_section

__all__ = ["report_outputs", "write_report"]


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.md``, its plots in ``run_dir/bench/`` and the bundles' model cards.

    Reads ``bench/results.json`` (required), ``teacher/eval.json``, ``students/*/eval.json``, ``statistics.json``
    and ``onnx/*/fidelity.json`` (when present). Returns the report's path.
    """
    view = RunView.load(Path(run_dir))
    layout = view.layout
    plot_accuracy_vs_latency(view, layout.plot(SCATTER_FILE))
    plot_latency_bars(view, layout.plot(BARS_FILE))
    if view.stage1_logs:
        plot_stage1_losses(view.stage1_logs, layout.plot(STAGE1_FILE))
    statistics = statistics_section(view.statistics) if view.statistics is not None else []
    write_text(layout.report, "\n".join(report_lines(view, statistics)))
    write_model_cards(layout.root, view.results)
    return layout.report


def report_outputs(run_dir: Path, bundle_names: list[str]) -> list[Path]:
    """Every file the report stage (:func:`run_statistics` then :func:`write_report`) writes in ``run_dir``.

    ``bundle_names`` are the exported bundles; each that holds an ONNX model and its fidelity record gets a model
    card, as :func:`write_report` writes them. The stage-1 plot is listed when stage-1 training logs exist (the
    report draws it from them), so call this once training is done.
    """
    layout = RunLayout(Path(run_dir))
    plots = [SCATTER_FILE, BARS_FILE] + ([STAGE1_FILE] if stage1_logs(layout) else [])
    cards = [layout.model_card(name) for name in bundle_names if holds_model(layout, name)]
    return [layout.report, layout.statistics, *(layout.plot(name) for name in plots), *cards]


def report_lines(view: RunView, statistics: list[str]) -> list[str]:
    """Every section of report.md in order; ``statistics`` is the statistics section (empty without one)."""
    warnings = busy_host(view) + slower_students(view) + trivial_students(view)
    return [
        *header(view),
        *([*warnings, ""] if warnings else []),
        *teacher_section(view),
        *budget_section(view),
        *artifact_section(view),
        *latency_section(view),
        *side_by_side_section(view),
        *replay_section(view),
        *sweep_section(view),
        *students_section(view),
        *statistics,
        *stage1_section(view),
        *fidelity_section(view),
        *deployment_section(view),
        *plots_section(view.layout, view.metric),
    ]
