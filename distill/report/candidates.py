"""The INT8 candidates of every bundle as table rows, and how the students' INT8 compares with the teacher's: the
report's answer to "what if I only quantised the teacher?"."""

from __future__ import annotations

from distill.bundle_records import Int8Candidate
from distill.layout import TEACHER
from distill.report.results import RunView

COLUMNS = [
    "export",
    "candidate",
    "flips vs fp32 (95% CI)",
    "score change p99 / max",
    "metric drop (dev)",
    "padding check",
    "p50 (ms, batch 1)",
    "size (MB)",
    "verdict",
]
INTRO = (
    "Every INT8 graph built, measured against its fp32 graph at batch 1 on the dev split plus unlabelled training "
    "rows (flips pooled, with an exact 95% binomial interval; the metric drop on dev alone) and timed side by side "
    "in one process. The fastest within budget whose padding check passes is shipped as `model.int8.onnx`."
)


def _verdict(candidate: Int8Candidate) -> str:
    if candidate.error is not None:
        return f"error: {candidate.error}"
    if candidate.shipped:
        return "**shipped**"
    return "within budget" if candidate.passed else f"over budget: {candidate.reason}"


def _flips(candidate: Int8Candidate) -> str:
    if candidate.flip_rate is None or candidate.score_change_max is not None:
        return "n/a"
    interval = candidate.flip_interval
    within = f" ({100 * interval[0]:.2f}-{100 * interval[1]:.2f}%)" if interval else ""
    count = f", {candidate.prediction_flips} of {candidate.examples}" if candidate.examples else ""
    return f"{100 * candidate.flip_rate:.2f}%{within}{count}"


def _cell(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def candidate_rows(view: RunView) -> list[list[str]]:
    """One row per INT8 candidate of every bundle, in the order they were built."""
    rows = []
    for name, record in view.fidelities.items():
        for candidate in record.int8.candidates if record.int8 else []:
            scores = "n/a"
            if candidate.score_change_max is not None:
                scores = f"{candidate.score_change_p99:.3f} / {candidate.score_change_max:.3f}"
            padding = "n/a" if candidate.padding_passed is None else "pass" if candidate.padding_passed else "FAIL"
            drop = "n/a" if candidate.metric_drop is None else f"{100 * candidate.metric_drop:+.2f} pt"
            size = None if candidate.size_bytes is None else candidate.size_bytes / 1e6
            rows.append(
                [name, candidate.setting, _flips(candidate), scores, drop, padding]
                + [_cell(candidate.p50_ms, ".2f"), _cell(size, ".2f"), _verdict(candidate)]
            )
    return rows


def _qat_note(name: str, qat: dict, candidates: list[Int8Candidate]) -> str:
    """How the quantisation-aware fine-tuning went, and what its candidates kept of the teacher."""
    what = f"- `{name}`: quantisation-aware fine-tuning ({qat['steps']} steps, learning rate {qat['learning_rate']:g})"
    if "error" in qat:
        return f"{what} failed: {qat['error']}; only the post-training candidates were tried."
    agreements = [
        f"{c.setting} {c.agreement_with_teacher:.4f}" for c in candidates if c.agreement_with_teacher is not None
    ]
    fp32 = next((c.fp32_agreement_with_teacher for c in candidates if c.fp32_agreement_with_teacher is not None), None)
    against = f" against the fp32 student's {fp32:.4f}" if fp32 is not None else ""
    return (
        f"{what}; its graphs have other weights than the fp32 student's, so they are judged by their dev metric and "
        f"their dev agreement with the teacher ({'; '.join(agreements) or 'none measured'}){against}, and their "
        "flips against the fp32 student are reported only."
    )


def candidate_notes(view: RunView) -> list[str]:
    """The sensitivity searches run, and each student's INT8 speed and accuracy against the teacher's INT8 graph."""
    notes = []
    for name, record in view.fidelities.items():
        search = record.int8.sensitivity if record.int8 else None
        if search and "error" not in search:
            kept = ", ".join(f"`{node}`" for node in search.get("excluded_nodes", [])) or "none"
            notes.append(
                f"- `{name}`: sensitivity search on {search['searched']}: {search['trials']} graph(s) measured on "
                f"{search['rows']} rows; nodes kept in fp32: {kept}."
            )
        qat = record.int8.qat if record.int8 else None
        if qat:
            notes.append(_qat_note(name, qat, [c for c in record.int8.candidates if c.qat]))
    point = view.results.single_request_point()
    int8_rows = [row for row in view.artifacts if row.precision in ("int8", "int8-over-budget")]
    teacher = next((row for row in int8_rows if row.name == TEACHER), None)
    if point is None or teacher is None:
        return notes
    teacher_p50, metric = view.p50(teacher, *point), view.metric
    flag = f" ({teacher.over_budget})" if teacher.over_budget else ""
    for row in int8_rows:
        p50 = view.p50(row, *point)
        if row.role != "student" or not p50 or not teacher_p50 or metric not in row.metrics:
            continue
        difference = 100 * (row.metrics[metric] - teacher.metrics[metric])
        notes.append(
            f"- `{row.name}` INT8 is {teacher_p50 / p50:.2f}x the speed of the teacher's INT8 graph{flag} at batch "
            f"{point[0]}, sequence {point[1]} ({p50:.2f} vs {teacher_p50:.2f} ms p50), {difference:+.2f} points of dev "
            f"{metric}."
        )
    return notes
