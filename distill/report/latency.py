"""The latency sections of report.md: the batch x sequence grid, the side-by-side timing, the dev-set replay and the
thread sweep."""

from __future__ import annotations

from distill.report.markdown import fmt_ratio, section
from distill.report.results import RunView


def latency_section(view: RunView) -> list[str]:
    rows = []
    for batch, seq in view.points:
        teacher = view.p50(view.teacher, batch, seq)
        for row in view.artifacts:
            point = view.results.latency_of(row, batch, seq)
            if point is None:
                continue
            speedup = teacher / point.p50_ms if teacher and point.p50_ms > 0 else None
            rows.append(
                [str(batch), str(seq), row.name, row.runtime, row.precision, f"{point.p50_ms:.2f}"]
                + [f"{point.p90_ms:.2f}", f"{point.p99_ms:.2f}", f"{point.throughput_per_s:.1f}", fmt_ratio(speedup)]
            )
    columns = ["batch", "seq", "artifact", "runtime", "precision", "p50 (ms)", "p90 (ms)", "p99 (ms)"]
    intro = "Speed-up is the teacher's PyTorch p50 divided by the artifact's p50 at the same batch and sequence length."
    return section("Latency", [*columns, "throughput (seq/s)", "speed-up"], rows, intro)


def side_by_side_section(view: RunView) -> list[str]:
    """The batch-1 timing of every artifact in turns, with its ratios to the teacher in PyTorch and to its INT8."""
    side = view.results.side_by_side
    if not side:
        return []
    int8 = [p.p50_ms for p in side if p.role == "teacher" and p.precision in ("int8", "int8-over-budget")]
    references = (view.results.side_by_side_p50(view.teacher), min(int8, default=None))
    rows = [
        [
            p.name,
            p.runtime,
            p.precision,
            f"{p.p50_ms:.2f}",
            *(fmt_ratio(r / p.p50_ms if r else None) for r in references),
        ]
        for p in sorted(side, key=lambda p: p.p50_ms)
    ]
    intro = (
        "Every artifact timed again in turns of ten calls, round after round in one process, each round's common "
        "slowdown divided out, so a slow spell of the machine hits all alike: the ratios to quote."
    )
    columns = ["artifact", "runtime", "precision", "p50 (ms)", "vs teacher PyTorch", "vs teacher's INT8"]
    return section(f"Side by side (batch 1, sequence {side[0].seq})", columns, rows, intro)


def replay_section(view: RunView) -> list[str]:
    replay = view.results.replay
    if not replay:
        return []
    teacher = {row.batch: row.sentences_per_s for row in replay if row.key == view.teacher.key}
    rows = []
    for row in replay:
        reference = teacher.get(row.batch)
        speedup = fmt_ratio(row.sentences_per_s / reference if reference else None)
        rows.append([row.name, row.runtime, row.precision, str(row.batch), f"{row.sentences_per_s:.1f}", speedup])
    columns = ["artifact", "runtime", "precision", "batch", "sentences/s", "speed-up"]
    intro = "The whole dev split, grouped by length into batches (as `distill predict` does), padded per call."
    return section("Dev-set replay", columns, rows, intro)


def sweep_section(view: RunView) -> list[str]:
    sweep = view.results.thread_sweep
    if not sweep:
        return []
    rows = [[r.name, r.runtime, r.precision, str(r.seq), str(r.threads), f"{r.p50_ms:.2f}"] for r in sweep]
    columns = ["artifact", "runtime", "precision", "seq", "threads", "p50 (ms)"]
    return section("Thread sweep (batch 1)", columns, rows)
