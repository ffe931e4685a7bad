"""Training budgets chosen from the data: what distill trains with when a config leaves a budget unset.

The rule (``docs/budget.md`` gives it with the measurements behind it):

- **Length.** At least :data:`MIN_STEPS` optimiser steps (teacher 600; student 1,000), so that a small training
  set is passed over many times; at least two epochs (one when the set is augmented: every copy is a new example);
  at most :data:`MAX_EPOCHS`. 2,490 pairs at batch 32 give the teacher 8 epochs; 16,000 sentences, 2.
- **Learning rate** by the model's width (:func:`learning_rate`): 1e-4 up to 512 hidden units, 5e-5 up to 768,
  2e-5 above.
- **Teacher learning rates on small sets** (:func:`teacher_rates`): below :data:`SMALL_ROWS` training rows the
  teacher is fine-tuned at the width's rate and at a fifth of it, and the better on dev is kept (RTE's 2,490 pairs
  need 2e-5, STS-B's 4,000 do better at 1e-4).
- **Warm-up** 10% of the steps (the schema's default).
- **Evaluation and early stopping.** When the length was chosen, dev is evaluated about ten times over the run (at
  least once per epoch), the best checkpoint is kept, and training stops after :data:`PATIENCE` evaluations in a row
  without a better dev metric.
- **Augmentation** (:func:`augmentation`) is on for a distilled student whose training set has fewer than
  ``augmentation.max_rows`` rows, with enough copies for about ``augmentation.target_rows`` rows in all (at most 20).
  The student's budget is then chosen for the augmented size, and its label-only twin's for the original rows; a
  DistilBERT-style student's hidden-state term (``alpha_cos`` unset) is off on augmented data, where it would run
  the teacher on every copy (about 1.7x the training time), and 1.0 otherwise.

Every value a config states is kept. :func:`resolve` returns the config with every budget filled in (what the
stages train with, what the fingerprints hash and what the run's ``config.yaml`` records) and one sentence per
choice for the report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from transformers import PretrainedConfig

from distill.config import (
    AugmentationConfig,
    Config,
    DistilBertStudentConfig,
    TeacherConfig,
    TinyBertStudentConfig,
    TrainingConfig,
)
from distill.data import TaskData

MIN_STEPS = {"teacher": 600, "student": 1000}
"""Fewest optimiser steps a chosen budget gives, by role."""
MAX_EPOCHS = 20
"""Most epochs a chosen budget gives."""
EVALUATIONS = 10
"""Dev evaluations over a run whose length was chosen (at least one per epoch)."""
PATIENCE = 3
"""Evaluations without a better dev metric after which a run whose length was chosen stops."""
MAX_COPIES = 20
"""Most augmented copies per training example chosen (TinyBERT's number)."""
SMALL_ROWS = 10_000
"""Below this many training rows the teacher is fine-tuned at two learning rates and the better on dev is kept."""
LOW_RATE_DIVISOR = 5
"""The second teacher rate tried on a small set: the width's rate divided by this (1e-4 -> 2e-5)."""


@dataclass(frozen=True)
class TaskShape:
    """What the rule reads about the data: training rows, pairs or single texts, classes (1: regression)."""

    rows: int
    pair: bool
    num_labels: int

    @classmethod
    def of(cls, data: TaskData) -> TaskShape:
        return cls(len(data.train), data.has_pair, data.num_labels)

    def words(self, rows: int | None = None) -> str:
        """``"2,490 training pairs"``."""
        return f"{self.rows if rows is None else rows:,} training {'pairs' if self.pair else 'sentences'}"


def learning_rate(width: int | None) -> float:
    """The peak learning rate for a model ``width`` hidden units wide (None: unknown, as a 768-wide model)."""
    width = 768 if width is None else width
    if width <= 512:
        return 1e-4
    return 5e-5 if width <= 768 else 2e-5


def teacher_rates(teacher: TeacherConfig, rows: int, teacher_config: PretrainedConfig | None) -> list[float]:
    """The teacher's learning-rate candidates: ``teacher.learning_rates`` when set; else, when distill fine-tunes
    the teacher, the config leaves the rate unset and the training set has fewer than :data:`SMALL_ROWS` rows, the
    width's rate and a fifth of it; else none (one fine-tuning at the training section's rate)."""
    if teacher.learning_rates:
        return list(teacher.learning_rates)
    # a checkpoint saved with a classification head is used as given under `finetune: auto`
    trained = any(
        arch.endswith("ForSequenceClassification") for arch in getattr(teacher_config, "architectures", None) or []
    )
    fine_tuned = teacher.finetune == "always" or (teacher.finetune == "auto" and not trained)
    if teacher.training.learning_rate is not None or not fine_tuned or rows >= SMALL_ROWS:
        return []
    rate = learning_rate(getattr(teacher_config, "hidden_size", None))
    return [rate, rate / LOW_RATE_DIVISOR]


def choose(training: TrainingConfig, rows: int, width: int | None, role: str, augmented: bool = False):
    """``training`` with every unset budget value chosen for ``rows`` training rows and a model ``width`` wide;
    and the choices in words (empty when the config stated everything).

    Returns:
        ``(TrainingConfig, list[str])``.
    """
    updates: dict[str, float | int] = {}
    said: list[str] = []
    steps_per_epoch = max(1, math.ceil(rows / training.batch_size))
    length_chosen = training.epochs is None and training.max_steps is None
    if training.epochs is None:
        low = 1 if augmented else 2
        epochs = min(MAX_EPOCHS, max(low, math.ceil(MIN_STEPS[role] / steps_per_epoch)))
        updates["epochs"] = float(epochs)
        if training.max_steps is None:
            steps = f"{epochs * steps_per_epoch:,} steps of {training.batch_size}"
            said.append(f"{epochs} epoch{'s' if epochs > 1 else ''} ({steps})")
    if training.learning_rate is None:
        updates["learning_rate"] = learning_rate(width)
        said.append(f"learning rate {updates['learning_rate']:g}" + (f" for width {width}" if width else ""))
    if length_chosen:
        total = int(updates["epochs"]) * steps_per_epoch
        if training.eval_steps is None:
            updates["eval_steps"] = min(steps_per_epoch, max(1, math.ceil(total / EVALUATIONS)))
            said.append(f"dev checked every {updates['eval_steps']} steps")
        if training.patience is None:
            updates["patience"] = PATIENCE
            said.append(f"early stop after {PATIENCE} checks without gain")
    return training.model_copy(update=updates), said


def augmentation(cfg: AugmentationConfig, rows: int, distilled: bool) -> AugmentationConfig:
    """``cfg`` with ``enabled`` and ``copies`` decided for a training set of ``rows`` rows.

    A disabled section keeps rule 2's ``copies: 20`` when unset, so it fingerprints as before.
    """
    enabled = cfg.enabled if cfg.enabled is not None else (distilled and rows < cfg.max_rows)
    copies = cfg.copies
    if copies is None:
        copies = min(MAX_COPIES, max(1, math.ceil(cfg.target_rows / rows))) if enabled else MAX_COPIES
    return cfg.model_copy(update={"enabled": enabled, "copies": copies})


def _student(
    spec: DistilBertStudentConfig | TinyBertStudentConfig, shape: TaskShape, teacher_width: int | None
) -> tuple[DistilBertStudentConfig | TinyBertStudentConfig, list[str]]:
    aug = augmentation(spec.augmentation, shape.rows, spec.objective == "distill")
    rows = shape.rows * (1 + aug.copies) if aug.enabled and spec.objective == "distill" else shape.rows
    notes = []
    if aug.enabled and spec.objective == "distill" and spec.augmentation.enabled is None:
        notes.append(
            f"{spec.name}: augmentation on ({aug.copies} copies of each of {shape.words()}, below "
            f"{aug.max_rows:,} rows)"
        )
    update: dict[str, object] = {"augmentation": aug}
    augmented = rows > shape.rows
    if isinstance(spec, DistilBertStudentConfig):
        if spec.alpha_cos is None:  # hidden states need the teacher online on every (augmented) row
            update["alpha_cos"] = 0.0 if augmented else 1.0
            if augmented:
                notes.append(f"{spec.name}: no hidden-state term (alpha_cos 0) on augmented data")
        sections = {"training": spec.training}
        width = teacher_width
        twin_source = spec.training
    else:
        sections = {"intermediate": spec.intermediate.training, "prediction": spec.prediction.training}
        width = spec.hidden_size
        twin_source = spec.prediction.training
    for name, training in sections.items():
        chosen, said = choose(training, rows, width, "student", augmented)
        if name == "training":
            update["training"] = chosen
        else:
            update[name] = getattr(spec, name).model_copy(update={"training": chosen})
        if said:
            where = spec.name if name == "training" else f"{spec.name} {name} stage"
            notes.append(f"{where}: {', '.join(said)} for {shape.words(rows)}")
    unset = twin_source.epochs is None or twin_source.learning_rate is None
    if spec.baseline and (spec.twin_training is not None or unset):  # the twin's budget, for the original rows
        twin, said = choose(spec.twin_training or twin_source, shape.rows, width, "student")
        update["twin_training"] = twin
        if said:
            notes.append(f"{spec.name}-twin: {', '.join(said)} for {shape.words()}")
    return spec.model_copy(update=update), notes


def resolve(config: Config, data: TaskData, teacher_config: PretrainedConfig | None) -> tuple[Config, list[str]]:
    """``config`` with every training budget and augmentation switch decided for ``data``; and one sentence per
    value distill chose (none when the config stated them all).

    ``teacher_config``: the teacher's ``config.json`` (its width sets the learning rates); None when unknown.
    """
    shape = TaskShape.of(data)
    width = getattr(teacher_config, "hidden_size", None)
    notes: list[str] = []
    teacher = config.teacher
    rates = teacher_rates(teacher, shape.rows, teacher_config)
    training = teacher.training
    if rates:
        training = training.model_copy(update={"learning_rate": rates[0]})
    teacher_training, said = choose(training, shape.rows, width, "teacher")
    if rates and teacher.learning_rates is None:
        said.append(f"learning rates {' and '.join(f'{rate:g}' for rate in rates)} tried (the better on dev kept)")
    if said and teacher.finetune != "never":
        notes.append(f"teacher: {', '.join(said)} for {shape.words()}")
    students = []
    for spec in config.students:
        resolved, student_notes = _student(spec, shape, width)
        students.append(resolved)
        notes += student_notes
    teacher = teacher.model_copy(update={"training": teacher_training, "learning_rates": rates or None})
    return config.model_copy(update={"teacher": teacher, "students": students}), notes


def is_resolved(config: Config) -> bool:
    """Whether every budget and augmentation switch of ``config`` is decided (as :func:`resolve` leaves it)."""
    students = [training for spec in config.students for training in spec.trainings().values()]
    switches = [spec.augmentation.enabled for spec in config.students]
    switches += [spec.alpha_cos for spec in config.students if isinstance(spec, DistilBertStudentConfig)]
    return all(t.resolved() for t in [config.teacher.training, *students]) and None not in switches


def ensure_resolved(config: Config, data: TaskData, teacher_config: PretrainedConfig | None) -> Config:
    """``config`` itself when :func:`is_resolved`, else :func:`resolve`'s config: for callers that run a stage
    without the pipeline (the pipeline resolves once, before the fingerprints)."""
    return config if is_resolved(config) else resolve(config, data, teacher_config)[0]


def resolve_student(config: Config, spec, data: TaskData, teacher_config: PretrainedConfig | None):
    """``(config, spec)`` with budgets chosen, for a student stage run outside the pipeline; ``spec`` may be a twin
    (found among ``config.trained_students()``) or a student the config does not list."""
    trainings = [*spec.trainings().values()] + ([spec.twin_training] if spec.twin_training else [])
    decided = spec.augmentation.enabled is not None and getattr(spec, "alpha_cos", 0.0) is not None
    if is_resolved(config) and all(t.resolved() for t in trainings) and decided:
        return config, spec
    listed = any(student.name == spec.name for student in config.trained_students())
    resolved = resolve(config if listed else config.model_copy(update={"students": [spec]}), data, teacher_config)[0]
    return resolved, next(student for student in resolved.trained_students() if student.name == spec.name)
