"""The typed view of a run that every report writer reads: its records, loaded once, through :mod:`distill.layout`.

The records themselves (and "find the p50 row") live in :mod:`distill.records`; this module finds them in a run
directory and orders the benchmark rows for display.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

from distill.bundle_records import Fidelity
from distill.errors import StageError
from distill.files import read_json
from distill.layout import EVAL_FILE, FIDELITY_FILE, RECIPE_FILE, STAGE1_DIR, TRAIN_LOG, RunLayout
from distill.metrics import approximate_standard_error
from distill.records import (
    ArtifactRow,
    BenchResults,
    Record,
    Statistics,
    StudentEval,
    StudentRecord,
    TeacherEval,
)
from distill.runtime import MODEL_FILES, PREFERRED_MODEL_FILES

PRECISION_FILES = {precision: file_name for file_name, precision in MODEL_FILES.items()}
STAGE1_LOG = Path(STAGE1_DIR) / TRAIN_LOG
"""A two-stage student's stage-1 training log, relative to its directory."""
STAGE1_TERMS = ("loss", "loss_emb", "loss_hidden", "loss_attention")
"""The stage-1 loss terms reported and drawn: total, embedding, mean hidden-state and mean attention MSE."""


def as_json(record: Record) -> dict[str, Any]:
    """``record`` as the JSON it was built or read with: a field never set stays absent rather than null."""
    return record.model_dump(mode="json", exclude_unset=True)


def single_request_p50(results: BenchResults | None, row: ArtifactRow | None) -> float | None:
    """``row``'s p50 at the single-request point (batch 1 or the smallest, longest sequence), when measured."""
    point = results.single_request_point() if results is not None else None
    return None if point is None else results.p50(row, *point)


def holds_model(layout: RunLayout, name: str) -> bool:
    """Whether bundle ``name`` has its fidelity record and an ONNX model: such a bundle gets a model card."""
    bundle = layout.bundle(name)
    return layout.fidelity(name).is_file() and any((bundle / file).is_file() for file in PREFERRED_MODEL_FILES)


def student_dirs(layout: RunLayout) -> list[Path]:
    """Every student directory holding an evaluation, by name (a twin right after its student)."""
    return sorted(path.parent for path in layout.students.glob(f"*/{EVAL_FILE}"))


def bundle_names(layout: RunLayout) -> list[str]:
    """Every exported bundle with a fidelity record, by name."""
    return [path.parent.name for path in sorted(layout.onnx.glob(f"*/{FIDELITY_FILE}"))]


def stage1_logs(layout: RunLayout) -> dict[str, list[dict[str, Any]]]:
    """Training-loss records of every two-stage (TinyBERT) student's stage 1, by student name."""
    logs = {}
    for path in sorted(layout.students.glob(f"*/{STAGE1_LOG.as_posix()}")):
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        records = [r for r in records if "loss" in r]
        if records:
            logs[path.parents[len(STAGE1_LOG.parts) - 1].name] = records
    return logs


class RunView:
    """One run's benchmark results and records, indexed for the report: teacher rows first (PyTorch first)."""

    def __init__(self, layout: RunLayout, results: BenchResults) -> None:
        self.layout = layout
        self.results = results
        self.teacher = results.teacher_row()
        teachers = sorted((r for r in results.artifacts if r.role == "teacher"), key=lambda r: r.runtime != "pytorch")
        self.artifacts = teachers + [r for r in results.artifacts if r.role != "teacher"]
        self.metric = results.metric
        self.regression = results.is_regression
        self.points = results.points()

    @classmethod
    def load(cls, run_dir: Path) -> RunView:
        layout = RunLayout(run_dir)
        if not layout.results.is_file():
            raise StageError(f"{layout.results} does not exist; run `distill bench` on this run directory first")
        return cls(layout, BenchResults.load(layout.results))

    def p50(self, row: ArtifactRow, batch: int, seq: int) -> float | None:
        return self.results.p50(row, batch, seq)

    @cached_property
    def budget_notes(self) -> list[str]:
        """The budgets distill chose for this run's config (``manifest.json``'s ``budget``; empty when it chose none
        or the run predates the rule)."""
        manifest = self.layout.manifest
        return list(read_json(manifest).get("budget", [])) if manifest.is_file() else []

    @cached_property
    def teacher_eval(self) -> TeacherEval | None:
        return TeacherEval.load_optional(self.layout.teacher_eval)

    @cached_property
    def student_evals(self) -> dict[str, StudentEval]:
        return {path.name: StudentEval.load(path / EVAL_FILE) for path in student_dirs(self.layout)}

    def student_record(self, name: str) -> StudentRecord | None:
        return StudentRecord.load_optional(self.layout.student(name) / RECIPE_FILE)

    @cached_property
    def fidelities(self) -> dict[str, Fidelity]:
        return {name: Fidelity.load(self.layout.fidelity(name)) for name in bundle_names(self.layout)}

    @cached_property
    def statistics(self) -> Statistics | None:
        return Statistics.load_optional(self.layout.statistics)

    def standard_error(self) -> tuple[float, int, str] | None:
        """One model's standard error in the main metric on this dev set, the number of dev examples, and how it was
        had: bootstrapped from the teacher's dev predictions (``statistics.json``), else approximated from the
        teacher's score (:func:`distill.metrics.approximate_standard_error`); None when the dev size is unknown."""
        statistics, evaluation = self.statistics, self.teacher_eval
        bootstrapped = statistics.teacher.get("standard_error", {}).get(self.metric) if statistics else None
        if bootstrapped is not None:
            return float(bootstrapped), statistics.dev_examples, "bootstrapped from the teacher's predictions"
        examples = evaluation.dev_examples if evaluation is not None else None
        value = self.teacher.metrics.get(self.metric)
        if not examples or value is None:
            return None
        approximate = approximate_standard_error(self.metric, value, examples)
        return approximate, examples, "approximated from the teacher's score"

    @cached_property
    def stage1_logs(self) -> dict[str, list[dict[str, Any]]]:
        return stage1_logs(self.layout)
