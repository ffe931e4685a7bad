"""Typed records for every JSON file one stage writes and another reads.

Each record validates when it is written and when it is read, so a renamed or missing key fails where the file is
read (with the file's path), not as a ``KeyError`` hours later. Unknown keys are kept (``extra="allow"``): files
written by an older or newer distill still load, and their extra fields survive a rewrite.

| file | record |
|---|---|
| ``teacher/eval.json`` | :class:`TeacherEval` |
| ``teacher/candidates/seed-K/eval.json`` | :class:`CandidateEval` |
| ``students/NAME/eval.json`` | :class:`StudentEval` |
| ``students/NAME/distill.json`` | :class:`StudentRecord` |
| ``onnx/NAME/fidelity.json`` | :class:`distill.bundle_records.Fidelity` |
| ``bench/results.json`` | :class:`BenchResults` |
| ``statistics.json`` | :class:`Statistics` (written by :mod:`distill.report.statistics`) |
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from distill.errors import StageError
from distill.files import read_json, write_json

R = TypeVar("R", bound="Record")


class Record(BaseModel):
    """Base of every on-disk record: unknown keys kept, written as plain JSON."""

    model_config = ConfigDict(extra="allow")

    def save(self, path: Path) -> None:
        """Write the record to ``path`` atomically; unset optional fields are left out, as readers expect."""
        write_json(path, self.model_dump(mode="json", exclude_none=True))

    @classmethod
    def load(cls: type[R], path: Path) -> R:
        """Read ``path``; a missing, unreadable or malformed file is one :class:`StageError` naming it."""
        try:
            return cls.model_validate(read_json(path))
        except FileNotFoundError:
            raise StageError(f"{path} does not exist; run the stage that writes it first") from None
        except ValidationError as err:
            item = err.errors()[0]
            where = ".".join(str(part) for part in item["loc"]) or "(top level)"
            raise StageError(
                f"{path} is not a valid {cls.__name__} record ({where}: {item['msg']}); rerun the stage that writes it"
            ) from None
        except ValueError as err:  # not JSON at all (JSONDecodeError)
            raise StageError(f"{path} is not valid JSON ({err}); rerun the stage that writes it") from None

    @classmethod
    def load_optional(cls: type[R], path: Path) -> R | None:
        return cls.load(path) if path.is_file() else None


# teacher/eval.json and its candidates
class CandidateScore(Record):
    seed: int
    learning_rate: float | None = None  # None: the one rate of the teacher's training section
    metrics: dict[str, float]

    def words(self) -> str:
        """``"seed 0"``, or ``"seed 0 at lr 2e-05"`` when several rates were tried."""
        return f"seed {self.seed}" + ("" if self.learning_rate is None else f" at lr {self.learning_rate:g}")


class Candidates(Record):
    """The teacher fine-tuned once per seed (and per learning rate): which one was kept, and every candidate's dev
    metrics."""

    chosen_seed: int
    chosen_learning_rate: float | None = None
    selected_on: str = "validation"
    seeds: list[CandidateScore]

    def chosen(self) -> CandidateScore:
        return next(c for c in self.seeds if (c.seed, c.learning_rate) == (self.chosen_seed, self.chosen_learning_rate))


class CandidateEval(CandidateScore):
    history: list[dict[str, Any]] = []


class TrivialBaseline(Record):
    """What answering without reading the text scores on dev (:mod:`distill.baseline`): the train split's majority
    class every time, or for regression its mean score (correlations of a constant counted as 0; ``mse`` its error)."""

    label: str | None = None
    mean: float | None = None
    metrics: dict[str, float]
    mse: float | None = None

    def answer(self) -> str:
        return f"always `{self.label}`" if self.mean is None else f"always {self.mean:.4g}, the training mean"


class TeacherEval(Record):
    source: str
    resolved_from: str | None = None
    finetuned_here: bool
    seed: int | None = None
    pretrained_from: str | None = None
    metrics: dict[str, float]
    main_metric: str
    baseline: TrivialBaseline | None = None
    majority_baseline: dict[str, Any] = {}  # written before ``baseline``: the majority label and its dev metrics
    min_margin: float | None = None
    train_examples: int | None = None
    dev_examples: int | None = None
    history: list[dict[str, Any]] = []
    candidates: Candidates | None = None

    def summary(self) -> dict[str, Any]:
        """What the manifest keeps of it."""
        chosen = {}
        if self.candidates:
            chosen = {"chosen_seed": self.candidates.chosen_seed}
            if self.candidates.chosen_learning_rate is not None:
                chosen["chosen_learning_rate"] = self.candidates.chosen_learning_rate
        return {"metrics": self.metrics, "finetuned_here": self.finetuned_here, **chosen}

    def trivial(self) -> TrivialBaseline | None:
        """The trivial baseline; for a record from before it, the majority class's that it kept (None: unknown)."""
        old = {name: value for name, value in self.majority_baseline.items() if name != "label"}
        if self.baseline is not None or not old:
            return self.baseline
        return TrivialBaseline(label=self.majority_baseline.get("label"), metrics=old)

    def line(self) -> str:
        """One readable sentence: the dev metric against the trivial baseline, and where the teacher came from."""
        trivial = self.trivial()
        floor = trivial.metrics.get(self.main_metric) if trivial else None
        baseline = f" (trivial baseline {floor:.4f}, {trivial.answer()})" if floor is not None else ""
        seeds = self.candidates
        chosen = f", best of {len(seeds.seeds)} candidates: {seeds.chosen().words()}" if seeds else ""
        made = "fine-tuned here" if self.finetuned_here else "used as given"
        return f"dev {self.main_metric} {self.metrics[self.main_metric]:.4f}{baseline}, {made}{chosen}"


# students/NAME/eval.json and distill.json
class StudentEval(Record):
    name: str
    recipe: str = "distilbert"
    objective: Literal["distill", "labels"] = "distill"
    metrics: dict[str, float]
    main_metric: str
    agreement_with_teacher: float | None = None
    parameters: int | None = None
    teacher_parameters: int | None = None
    best_checkpoint: dict[str, Any] | None = None
    selected_seed: int | None = None
    selection: str | None = None
    seeds: dict[str, dict[str, float]] | None = None

    def summary(self) -> dict[str, Any]:
        """What the manifest keeps of it."""
        chosen = {"selected_seed": self.selected_seed} if self.selected_seed is not None else {}
        return {"metrics": self.metrics, "agreement_with_teacher": self.agreement_with_teacher, **chosen}

    def line(self) -> str:
        agree = (
            "" if self.agreement_with_teacher is None else f", agreement with teacher {self.agreement_with_teacher:.4f}"
        )
        return f"dev {self.main_metric} {self.metrics[self.main_metric]:.4f}{agree}"


class Augmentation(Record):
    source_examples: int
    generated: int
    kept: int
    dropped_disagreeing: int = 0
    candidates_from: str = ""


class StudentRecord(Record):
    """``distill.json``: how a student was made (recipe, initialisation, losses, budget) and its training history."""

    recipe: str = "distilbert"
    objective: Literal["distill", "labels"] = "distill"
    student: dict[str, Any] = {}
    teacher: str | None = None
    description: list[str] = []
    layer_map: list[int] = []
    seed: int | None = None
    precision: str | None = None
    resumed_from: str | None = None
    history: list[dict[str, Any]] = []
    augmentation: Augmentation | None = None

    def save(self, path: Path) -> None:
        """As :meth:`Record.save`, keeping ``resumed_from`` when it is null (it says the training was not resumed)."""
        write_json(path, {**self.model_dump(mode="json", exclude_none=True), "resumed_from": self.resumed_from})


# bench/results.json
class PaddingCheck(Record):
    passed: bool
    flips: int = 0
    max_abs_diff: float = 0.0


class ArtifactRow(Record):
    """One measured model file: its identity, dev metrics, agreement with the teacher, size."""

    name: str
    role: Literal["teacher", "student"]
    runtime: Literal["pytorch", "onnxruntime"]
    precision: str = "fp32"
    path: str = ""
    size_bytes: int
    parameters: int
    metrics: dict[str, float]
    agreement_with_teacher: float | None = None
    padding_check: PaddingCheck | None = None
    over_budget: str | None = None  # an INT8 graph benchmarked though not shipped: why ("over budget: 2.41% flips")

    @property
    def key(self) -> tuple[str, str, str]:
        return self.name, self.runtime, self.precision

    @property
    def label(self) -> str:
        return f"{self.name} ({self.runtime}, {self.precision})"


class LatencyRow(Record):
    name: str
    role: str = "student"
    runtime: str
    precision: str = "fp32"
    batch: int
    seq: int
    threads: int | None = None
    p50_ms: float
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    throughput_per_s: float = 0.0
    iterations: int = 0

    @property
    def key(self) -> tuple[str, str, str]:
        return self.name, self.runtime, self.precision


class ReplayRow(Record):
    name: str
    runtime: str
    precision: str = "fp32"
    batch: int
    sentences_per_s: float

    @property
    def key(self) -> tuple[str, str, str]:
        return self.name, self.runtime, self.precision


class BenchResults(Record):
    """``bench/results.json``: every artifact's accuracy and size, every latency point, the host and protocol."""

    host: dict[str, Any]
    versions: dict[str, str | None] = {}
    protocol: dict[str, Any] = {}
    metric_names: list[str]
    teacher: str = "teacher"
    is_regression: bool = False
    artifacts: list[ArtifactRow]
    latency: list[LatencyRow] = []
    replay: list[ReplayRow] = []
    thread_sweep: list[LatencyRow] = []
    side_by_side: list[LatencyRow] = []  # batch 1, longest sequence, every artifact timed in turns (older runs: none)

    @property
    def metric(self) -> str:
        """The main metric, in which gains and drops are stated."""
        return self.metric_names[0]

    def teacher_row(self) -> ArtifactRow:
        """The teacher's PyTorch row, the reference of every ratio."""
        row = next((r for r in self.artifacts if r.role == "teacher" and r.runtime == "pytorch"), None)
        if row is None:
            raise StageError("bench/results.json has no teacher PyTorch row; re-run `distill bench`")
        return row

    def latency_of(self, row: ArtifactRow, batch: int, seq: int) -> LatencyRow | None:
        return next((p for p in self.latency if p.key == row.key and p.batch == batch and p.seq == seq), None)

    def p50(self, row: ArtifactRow | None, batch: int, seq: int) -> float | None:
        """``row``'s median latency at ``(batch, seq)``, or None when it was not measured there."""
        point = self.latency_of(row, batch, seq) if row is not None else None
        return None if point is None else point.p50_ms

    def side_by_side_p50(self, row: ArtifactRow | None) -> float | None:
        """``row``'s p50 in the side-by-side timing, or None when it was not timed there."""
        point = next((p for p in self.side_by_side if row is not None and p.key == row.key), None)
        return None if point is None else point.p50_ms

    def points(self) -> list[tuple[int, int]]:
        return sorted({(p.batch, p.seq) for p in self.latency})

    def single_request_point(self) -> tuple[int, int] | None:
        """Batch 1 (or the smallest batch) at the longest sequence: the single-request latency users feel."""
        points = self.points()
        if not points:
            return None
        batch = min(b for b, _ in points)
        return batch, max(seq for b, seq in points if b == batch)

    def deployed(self, name: str, preference: list[str]) -> ArtifactRow | None:
        """``name``'s deployed artifact: its ONNX row earliest in ``preference`` (precisions, fastest first)."""
        rows = [r for r in self.artifacts if r.name == name and r.runtime == "onnxruntime"]
        ranked = [r for r in rows if r.precision in preference]
        return min(ranked, key=lambda r: preference.index(r.precision)) if ranked else None


# statistics.json
class IntervalRecord(Record):
    estimate: float
    low: float
    high: float
    level: float = 0.95
    verdict: str | None = None
    reading: str | None = None


class SeedSummaryRecord(Record):
    values: list[float]
    mean: float
    std: float
    interval: IntervalRecord


class StudentStatistics(Record):
    objective: str = "distill"
    seeds: list[str]
    selected_seed: int | None = None
    metrics: dict[str, SeedSummaryRecord]
    retained_vs_teacher: float | None = None
    vs_teacher: IntervalRecord
    twin: str | None = None
    gain_over_twin: IntervalRecord | None = None
    teacher_over_twin: IntervalRecord | None = None


class Statistics(Record):
    """``statistics.json``: every student over its seeds, against its label-only twin and the teacher."""

    metric: str
    dev_examples: int
    bootstrap_resamples: int
    teacher: dict[str, Any]
    students: dict[str, StudentStatistics]
    method: str = ""
