"""The recipe interface every student family implements, and the typed values that pass between a recipe and the
stage that trains, evaluates and saves any student (:mod:`distill.students.stage`).

A recipe turns a student's config section into a trained model (:meth:`Recipe.train`), says what it will do before
it starts (:meth:`Recipe.plan`), describes what it did for the model card (:meth:`Recipe.describe`) and lists every
problem it can see from the config and the teacher's ``config.json`` alone (:meth:`Recipe.check`), so that
``distill validate`` finds them before any training.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from datasets import Dataset
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from distill.config import Config, DistilBertStudentConfig, TinyBertStudentConfig, TrainingConfig
from distill.data import TaskData
from distill.errors import StudentError
from distill.mapping import select_layers
from distill.records import Augmentation
from distill.train import TrainResult

StudentSpec = DistilBertStudentConfig | TinyBertStudentConfig
S = TypeVar("S", DistilBertStudentConfig, TinyBertStudentConfig)


@dataclass(frozen=True)
class StudentContext:
    """Everything one student's training reads: the run's config, the student's section, the loaded data, the saved
    teacher, where to work, and the dev split tokenised by the teacher's tokenizer."""

    config: Config
    spec: StudentSpec
    data: TaskData
    teacher_dir: Path
    student_dir: Path
    cache_dir: Path
    tokenizer: PreTrainedTokenizerBase
    validation: Dataset
    teacher_bf16: bool = False
    """Whether the teacher labels training rows (the logit cache, augmented copies) under bf16 autocast: when the
    student's last training stage runs in bf16 on a device that has it."""


@dataclass(frozen=True)
class TrainingFacts:
    """What happened while a student was made, beyond its config: what :meth:`Recipe.describe` reads."""

    layer_map: list[int]
    """Teacher layer facing (and, when copied, initialising) each student layer."""
    origin: str
    """The model the student's weights came from, in words (see :func:`distill.students.init.initialisation_source`)."""
    augmentation: Augmentation | None = None
    """The augmented copies generated and kept, when the recipe augments its training set."""


@dataclass
class TrainedStudent:
    """A recipe's result: the trained model (the best on dev; on a follower rank of a data-parallel run, its copy of
    the last one), the teacher it learned from, what happened, and the recipe's own fields of ``distill.json``."""

    result: TrainResult
    teacher: PreTrainedModel
    facts: TrainingFacts
    record: dict[str, Any] = field(default_factory=dict)


class Recipe(ABC, Generic[S]):
    """One student family. A new recipe is one module with a subclass, registered in
    :data:`distill.students.registry.RECIPES` under its config's ``recipe`` name."""

    name: str

    def check(self, spec: S, teacher_config: PretrainedConfig) -> list[str]:
        """Every problem with ``spec`` that the teacher's config alone reveals, each one sentence naming the fix.

        Here: the layer map against the teacher's depth; a recipe adds its own checks.
        """
        try:
            select_layers(spec.layer_selection, teacher_config.num_hidden_layers, spec.num_layers)
        except StudentError as err:
            return [str(err)]
        return []

    def layer_map(self, spec: S, teacher_config: PretrainedConfig) -> list[int]:
        """The teacher layer facing each student layer, once :meth:`check` finds nothing: training stops on the
        first problem ``distill validate`` would report, as a :class:`StudentError`, before any work."""
        problems = self.check(spec, teacher_config)
        if problems:
            raise StudentError(problems[0])
        return select_layers(spec.layer_selection, teacher_config.num_hidden_layers, spec.num_layers)

    @abstractmethod
    def plan(self, spec: S, data: TaskData) -> str:
        """What training ``spec`` is about to do, with sizes, in one line."""

    @abstractmethod
    def train(self, context: StudentContext) -> TrainedStudent:
        """Build the student from the saved teacher and train it in ``context.student_dir`` (resuming there)."""

    @abstractmethod
    def describe(self, spec: S, facts: TrainingFacts) -> list[str]:
        """The model card's sentences on how the student was made."""

    @abstractmethod
    def eval_batch_size(self, spec: S) -> int:
        """Batch size of the final pass over the dev split."""

    def work_dirs(self, student_dir: Path) -> list[Path]:
        """The directories whose training checkpoints are removed once the student is saved."""
        return [student_dir]


def budget_words(training: TrainingConfig) -> str:
    """A training budget as the model card states it: ``"3.0 epoch(s), batch 32, learning rate 0.0001"``."""
    return f"{training.epochs} epoch(s), batch {training.batch_size}, learning rate {training.learning_rate}"


def examples(data: TaskData) -> str:
    """The training split's size in words: ``"16,000 training sentences"``."""
    return f"{len(data.train):,} training {'pairs' if data.has_pair else 'sentences'}"
