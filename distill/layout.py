"""Every path and file name of a run directory, in one place.

```
RUN/
  config.yaml  manifest.json  report.md  statistics.json  .lock
  teacher/                 eval.json, dev_logits.npy, HF model; candidates/seed-K/ with teacher.seeds
  students/NAME/           eval.json, distill.json, dev_logits.npy, HF model; seeds/SEED/ with several seeds;
                           stage1/ and stage2/ for two-stage recipes; checkpoints/ while training
  cache/                   augmented training sets and teacher logits
  onnx/NAME/               model.onnx, model.opt.onnx, model.int8.onnx, fidelity.json, README.md, tokenizer
  bench/                   results.json and the plots
  previous/                outputs moved aside when a stage's inputs changed
  evaluations/STEM/        `distill evaluate` on a new file: evaluation.json, evaluation.md
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".lock"
REPORT_FILE = "report.md"
STATISTICS_FILE = "statistics.json"
EVAL_FILE = "eval.json"
RECIPE_FILE = "distill.json"
DEV_LOGITS_FILE = "dev_logits.npy"
FIDELITY_FILE = "fidelity.json"
MODEL_CARD_FILE = "README.md"
RESULTS_FILE = "results.json"
SCATTER_FILE = "accuracy_vs_latency.png"
BARS_FILE = "latency_bars.png"
STAGE1_FILE = "stage1_losses.png"
CHECKPOINTS_DIR = "checkpoints"
"""Resumable training state inside a model's directory (or a training stage's), removed once the model is saved."""
TRAIN_LOG = Path("logs") / "train_log.jsonl"
"""The training log inside a model's (or a training stage's) directory; TensorBoard events are beside it."""
STAGE1_DIR, STAGE2_DIR, FINAL_DIR = "stage1", "stage2", "final"
"""A two-stage student trains in ``stage1/`` (its result in ``stage1/final/``) and then ``stage2/``."""
TEACHER = "teacher"
"""The teacher's name wherever models are listed by name (bundles, benchmark rows)."""
TWIN_SUFFIX = "-twin"
"""A label-only twin is named after its student plus this suffix."""


def _at(*parts: str) -> Any:
    """A read-only attribute of :class:`RunLayout`: the path ``parts`` inside the run directory."""
    return property(lambda layout: layout.root.joinpath(*parts))


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory; nothing here touches the disk."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    config = _at(CONFIG_FILE)
    manifest = _at(MANIFEST_FILE)
    report = _at(REPORT_FILE)
    statistics = _at(STATISTICS_FILE)
    cache = _at("cache")
    previous = _at("previous")
    """Where outputs of a stage whose inputs changed are moved, one folder per move."""
    teacher = _at(TEACHER)
    teacher_eval = _at(TEACHER, EVAL_FILE)
    teacher_logits = _at(TEACHER, DEV_LOGITS_FILE)
    students = _at("students")
    onnx = _at("onnx")
    bench = _at("bench")
    results = _at("bench", RESULTS_FILE)
    evaluations = _at("evaluations")

    def teacher_candidate(self, seed: int, learning_rate: float | None = None) -> Path:
        return candidate_dir(self.teacher, seed, learning_rate)

    def student(self, name: str) -> Path:
        return self.students / name

    def student_seed(self, name: str, seed: int) -> Path:
        return seed_dir(self.student(name), seed)

    def model(self, name: str) -> Path:
        """The PyTorch model directory of ``name`` (the teacher or a student)."""
        return self.teacher if name == TEACHER else self.student(name)

    # exports and measurements
    def bundle(self, name: str) -> Path:
        return self.onnx / name

    def fidelity(self, name: str) -> Path:
        return self.bundle(name) / FIDELITY_FILE

    def model_card(self, name: str) -> Path:
        return self.bundle(name) / MODEL_CARD_FILE

    def plot(self, file_name: str) -> Path:
        return self.bench / file_name


def candidate_dir(teacher_dir: Path, seed: int, learning_rate: float | None = None) -> Path:
    """Where the teacher fine-tuned with ``seed`` (at ``learning_rate``, when several rates are tried) is kept when
    ``teacher.seeds`` or ``teacher.learning_rates`` list several."""
    rate = "" if learning_rate is None else f"-lr-{learning_rate:g}"
    return teacher_dir / "candidates" / f"seed-{seed}{rate}"


def seed_dir(student_dir: Path, seed: int) -> Path:
    """Where a student trained with several ``seeds`` keeps its run with ``seed``."""
    return student_dir / "seeds" / str(seed)


def seed_dirs(student_dir: Path) -> list[Path]:
    """The per-seed run directories of a student trained with several seeds, or ``[student_dir]``."""
    seeds = sorted((p for p in (student_dir / "seeds").glob("*") if (p / EVAL_FILE).is_file()), key=lambda p: p.name)
    return seeds or [student_dir]
