"""Which artifact a student deploys, and the CI gates judged on it (``bench.gates``)."""

from __future__ import annotations

import click

from distill.config import GateConfig
from distill.errors import GateError
from distill.records import ArtifactRow, BenchResults
from distill.runtime import MODEL_FILES

DEPLOYMENT_PREFERENCE = list(MODEL_FILES.values())
"""Precisions of a bundle's ONNX files, fastest first: the order ``distill predict`` picks a file in."""


def deployed_artifact(results: BenchResults, name: str) -> ArtifactRow | None:
    """The row of ``name``'s deployed model: its fastest ONNX file present (None when it has no ONNX rows)."""
    return results.deployed(name, DEPLOYMENT_PREFERENCE)


def gate_failures(results: BenchResults, gates: GateConfig) -> list[str]:
    """Every CI gate that a student's deployed artifact fails, as sentences (empty when all pass or none is set).

    Speed-up is against the teacher's PyTorch p50 at batch 1 and the longest benchmarked sequence.
    """
    if gates.max_accuracy_drop is None and gates.min_speedup is None and gates.max_size_ratio is None:
        return []
    metric = results.metric
    teacher = results.teacher_row()
    seq = max(point.seq for point in results.latency)
    failures = []
    for name in sorted({row.name for row in results.artifacts if row.role == "student"}):
        deployed = deployed_artifact(results, name)
        if deployed is None:
            continue
        label = f"student {name} ({deployed.precision} ONNX)"
        drop = teacher.metrics[metric] - deployed.metrics[metric]
        if gates.max_accuracy_drop is not None and drop > gates.max_accuracy_drop:
            failures.append(
                f"{label} loses {drop:.4f} {metric} against the teacher, "
                f"more than bench.gates.max_accuracy_drop={gates.max_accuracy_drop}"
            )
        mine, reference = results.p50(deployed, 1, seq), results.p50(teacher, 1, seq)
        if gates.min_speedup is not None and mine and reference and reference / mine < gates.min_speedup:
            failures.append(
                f"{label} is {reference / mine:.2f}x faster than the teacher at batch 1, seq {seq}, "
                f"less than bench.gates.min_speedup={gates.min_speedup}"
            )
        ratio = deployed.size_bytes / teacher.size_bytes
        if gates.max_size_ratio is not None and ratio > gates.max_size_ratio:
            failures.append(
                f"{label} is {ratio:.2f}x the teacher's size, "
                f"more than bench.gates.max_size_ratio={gates.max_size_ratio}"
            )
    return failures


def check_gates(results: BenchResults, gates: GateConfig) -> None:
    """Raise :class:`GateError` when a configured gate fails (the results are already on disk)."""
    failures = gate_failures(results, gates)
    if failures:
        raise GateError(
            f"{len(failures)} CI gate(s) failed: " + "; ".join(failures) + "; see report.md, or relax bench.gates"
        )
    if any(value is not None for value in gates.model_dump().values()):
        click.echo("[gates] every configured gate passed")
