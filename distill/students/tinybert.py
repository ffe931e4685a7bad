"""TinyBERT-style students: narrower and shallower than the teacher, distilled in two stages.

Stage 1 (intermediate layers): MSE between the student's embedding output and hidden states, projected to the
teacher's width by learned linear maps, and the teacher's; MSE between attention maps (pre-softmax scores, as
TinyBERT does, or probabilities). Stage 2 (prediction layer): KL between softened logits (MSE for regression).

The projections live in a wrapper (:class:`ProjectedStudent`) that only stage 1 trains: they are saved in its
checkpoints and in ``stage1/final/projections.safetensors``, never in the exported student.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel

from distill import distributed
from distill.cache import with_teacher_logits
from distill.config import TinyBertStudentConfig, TrainingConfig
from distill.data import TaskData, tokenize
from distill.errors import StudentError
from distill.files import atomic_dir
from distill.layout import FINAL_DIR, STAGE1_DIR, STAGE2_DIR
from distill.mapping import hidden_state_pairs
from distill.objective import DistilBertObjective, IntermediateObjective, LabelObjective
from distill.students.attention import PROJECTIONS_FILE, SCORES_ATTENTION, ProjectedStudent
from distill.students.augmented import augmentation_sentence, augmented_words, training_rows
from distill.students.base import Recipe, StudentContext, TrainedStudent, TrainingFacts, budget_words, examples
from distill.students.init import initialisation_source
from distill.students.truncate import shrink_problem, student_config_for, truncate_teacher
from distill.train import budget, train_model

__all__ = ["SCORES_ATTENTION", "ProjectedStudent", "TinyBertRecipe", "build_tinybert_student", "train_tinybert"]

SHAPE_FIELDS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")
"""The config fields a checkpoint must share with the student it initialises."""


def head_problem(spec: TinyBertStudentConfig, teacher_config: PretrainedConfig) -> str | None:
    """Why stage 1 cannot compare attention maps head for head (the teacher's heads do not group evenly), or None."""
    teacher_heads, student_heads = teacher_config.num_attention_heads, spec.num_attention_heads
    compared = spec.intermediate.enabled and spec.intermediate.alpha_attention > 0
    uneven = compared and teacher_heads % student_heads != 0
    message = (
        f"attention distillation maps groups of teacher heads onto student heads, but the teacher's {teacher_heads} "
        f"heads do not split evenly into the student's {student_heads}; pick a head count that divides it, or set "
        "intermediate.alpha_attention: 0"
    )
    return message if uneven else None


def checkpoint_problem(spec: TinyBertStudentConfig, teacher_config: PretrainedConfig) -> str | None:
    """Why ``spec.init_checkpoint`` cannot initialise the student (missing, unreadable, another shape), or None."""
    path = Path(str(spec.init_checkpoint)).expanduser()
    if not (path / "config.json").is_file():
        return (
            f"init_checkpoint {path} is not a saved model directory (no config.json); point it at a directory "
            "written by save_pretrained, such as RUN/students/NAME/stage1/final"
        )
    if not any(path.glob("*.safetensors")):
        return (
            f"init_checkpoint {path} holds no safetensors weights, and distill loads no other format (pickled "
            "weights can run code); save the checkpoint with save_pretrained(safe_serialization=True)"
        )
    try:
        saved = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        return (
            f"init_checkpoint {path} has a config.json that could not be read ({str(err).splitlines()[0]}); point "
            "it at a directory written by save_pretrained"
        )
    expected = student_config_for(teacher_config, spec)
    mismatched = [
        f"{name} {getattr(saved, name)} (config says {getattr(expected, name)})"
        for name in SHAPE_FIELDS
        if getattr(saved, name) != getattr(expected, name)
    ]
    if not mismatched:
        return None
    return (
        f"init_checkpoint {path} does not match the student: it has {', '.join(mismatched)}; "
        "set the student's shape to the checkpoint's"
    )


def init_problem(spec: TinyBertStudentConfig, teacher_config: PretrainedConfig) -> str | None:
    """Why ``spec.init`` cannot initialise the student from this teacher (or its checkpoint), or None."""
    if spec.init == "truncate":
        return shrink_problem(teacher_config, student_config_for(teacher_config, spec))
    return checkpoint_problem(spec, teacher_config) if spec.init == "checkpoint" else None


def build_tinybert_student(
    teacher: PreTrainedModel, spec: TinyBertStudentConfig, layer_map: list[int], seed: int
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """The student and a record of its initialisation; the same ``seed`` gives the same weights."""
    torch.manual_seed(seed)
    if spec.init == "checkpoint":
        problem = checkpoint_problem(spec, teacher.config)
        if problem:
            raise StudentError(problem)
        path = Path(str(spec.init_checkpoint)).expanduser()
        student = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=teacher.config.num_labels, ignore_mismatched_sizes=True, use_safetensors=True
        )
        student.config.id2label, student.config.label2id = teacher.config.id2label, teacher.config.label2id
        return student, {"init": "checkpoint", "checkpoint": str(path)}
    student = AutoModelForSequenceClassification.from_config(student_config_for(teacher, spec))
    if spec.init == "random":
        return student, {"init": "random"}
    kept = truncate_teacher(teacher, student, layer_map)
    return student, {"init": "truncate", "layer_map": layer_map, **kept}


def total_epochs(spec: TinyBertStudentConfig) -> float:
    """Both stages' epochs: the budget of a label-only twin."""
    return spec.prediction.training.epochs + (spec.intermediate.training.epochs if spec.intermediate.enabled else 0)


def twin_training(spec: TinyBertStudentConfig) -> TrainingConfig:
    """A label-only twin's training: ``twin_training``, else stage 2's settings for both stages' epochs."""
    if spec.twin_training is not None:
        return spec.twin_training
    return spec.prediction.training.model_copy(update={"epochs": total_epochs(spec)})


def _intermediate_stage(
    context: StudentContext,
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    train_set: Dataset,
    layer_map: list[int],
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """Stage 1 in ``student_dir/stage1``, ending with ``stage1/final`` (skipped when that exists); returns the
    stage-1 student, loaded from there, and the stage's record."""
    spec = context.spec
    assert isinstance(spec, TinyBertStudentConfig)
    stage = spec.intermediate
    stage_dir = context.student_dir / STAGE1_DIR
    final = stage_dir / FINAL_DIR
    objective = IntermediateObjective.from_stage(stage, layer_map, spec.num_attention_heads)
    if not (final / "config.json").is_file():
        attention = SCORES_ATTENTION if stage.attention_target == "scores" else "eager"
        teacher.set_attn_implementation(attention)
        student.set_attn_implementation(attention)
        torch.manual_seed(context.config.seed)
        wrapper = ProjectedStudent(student, teacher.config.hidden_size)
        train_model(
            wrapper, train_set, context.validation, context.tokenizer, stage.training, stage_dir,
            context.data.metrics, context.config.seed, objective, teacher=teacher, select_best=False,
        )  # fmt: skip
        student.set_attn_implementation("eager")
        teacher.set_attn_implementation("eager")

        def save() -> None:
            with atomic_dir(final) as tmp:
                wrapper.save_pretrained(tmp)

        distributed.on_main(save)  # every rank starts stage 2 from the saved stage-1 student
    record = {
        **stage.model_dump(mode="json"),
        "hidden_state_pairs": hidden_state_pairs(layer_map),
        "projections": f"stage1/final/{PROJECTIONS_FILE}",
        "convention": "MSE(W x student, teacher) per mapped hidden state; attention MSE over heads and real "
        "(query, key) pairs; teacher heads averaged in groups when the student has fewer",
    }
    return AutoModelForSequenceClassification.from_pretrained(final, use_safetensors=True), record


def train_tinybert(context: StudentContext) -> TrainedStudent:
    """Run both stages (or label-only training) for ``context.spec``.

    Stage 1 works in ``student_dir/stage1`` and ends by writing ``stage1/final``; stage 2 in ``student_dir/stage2``.
    A rerun skips a finished stage 1 and resumes an interrupted stage from its newest complete checkpoint.
    """
    config, spec, data, tokenizer = context.config, context.spec, context.data, context.tokenizer
    assert isinstance(spec, TinyBertStudentConfig)
    teacher = AutoModelForSequenceClassification.from_pretrained(
        context.teacher_dir, attn_implementation="eager", use_safetensors=True
    )
    layer_map = TinyBertRecipe().layer_map(spec, teacher.config)  # raises what `distill validate` reports
    source, origin = initialisation_source(spec, teacher, context.teacher_dir, config.seed)
    student, init = build_tinybert_student(source, spec, layer_map, config.seed)
    if spec.init == "truncate":
        init["from"] = origin
    del source
    teacher.to(distributed.local_device())  # augmentation filtering and the logit cache run on it
    architecture = ("num_layers", "hidden_size", "num_attention_heads", "intermediate_size")
    record: dict[str, Any] = {
        "architecture": {name: getattr(spec, name) for name in architecture},
        "init": init,
        "layer_map": layer_map,
    }
    facts = TrainingFacts(layer_map, origin)
    if spec.objective == "labels":
        train_set = tokenize(data.train, tokenizer, config.data.max_length)
        result = train_model(
            student, train_set, context.validation, tokenizer, twin_training(spec), context.student_dir,
            data.metrics, config.seed, LabelObjective(),
        )  # fmt: skip
        record["loss"] = {"labels": "cross-entropy" if not data.is_regression else "mse"}
        return TrainedStudent(result, teacher, facts, record)

    train_data, known_logits, augmentation, counts = training_rows(context, teacher, spec.augmentation)
    if augmentation is not None:
        record["augmentation"] = augmentation
        facts = TrainingFacts(layer_map, origin, counts)
    train_set = tokenize(train_data, tokenizer, config.data.max_length)
    if spec.intermediate.enabled:
        student, record["intermediate"] = _intermediate_stage(context, teacher, student, train_set, layer_map)
    stage = spec.prediction
    stage_set, record["stage2_teacher_logits"] = with_teacher_logits(
        train_set,
        teacher,
        context.teacher_dir,
        tokenizer,
        context.cache_dir,
        known=known_logits,
        bf16=context.teacher_bf16,
    )
    result = train_model(
        student, stage_set, context.validation, tokenizer, stage.training, context.student_dir / STAGE2_DIR,
        data.metrics, config.seed, DistilBertObjective.from_stage(stage, layer_map), teacher=teacher,
    )  # fmt: skip
    record["loss"] = {
        "kd": stage.kd_loss,
        "temperature": stage.temperature,
        "weights": {"kd": stage.alpha_kd, "ce": stage.alpha_ce},
        "convention": "KL(teacher_T || student_T) x T^2 (MSE for regression)",
    }
    record["prediction"] = stage.model_dump(mode="json")
    record["train_examples"] = len(train_set)
    return TrainedStudent(result, teacher, facts, record)


class TinyBertRecipe(Recipe[TinyBertStudentConfig]):
    name = "tinybert"

    def check(self, spec: TinyBertStudentConfig, teacher_config: PretrainedConfig) -> list[str]:
        found = super().check(spec, teacher_config)
        return found + [p for p in (head_problem(spec, teacher_config), init_problem(spec, teacher_config)) if p]

    def plan(self, spec: TinyBertStudentConfig, data: TaskData) -> str:
        shape = f"{spec.num_layers}-layer, {spec.hidden_size}-wide TinyBERT-style student"
        if spec.objective == "labels":
            return f"training a label-only {shape} on {examples(data)}, {budget(twin_training(spec))}"
        extra = augmented_words(spec.augmentation)
        stage1 = f"stage 1: {budget(spec.intermediate.training)}; " if spec.intermediate.enabled else ""
        return f"distilling a {shape} on {examples(data)}{extra}; {stage1}stage 2: {budget(spec.prediction.training)}"

    def train(self, context: StudentContext) -> TrainedStudent:
        return train_tinybert(context)

    def eval_batch_size(self, spec: TinyBertStudentConfig) -> int:
        return spec.prediction.training.eval_batch_size

    def work_dirs(self, student_dir: Path) -> list[Path]:
        return [student_dir, student_dir / STAGE1_DIR, student_dir / STAGE2_DIR]

    def describe(self, spec: TinyBertStudentConfig, facts: TrainingFacts) -> list[str]:
        shape = (
            f"TinyBERT-style, {spec.num_layers} layers, hidden {spec.hidden_size}, {spec.num_attention_heads} heads, "
            f"FFN {spec.intermediate_size}; init {spec.init}"
            + (f" from layers {facts.layer_map} of {facts.origin}" if spec.init == "truncate" else "")
        )
        if spec.objective == "labels":
            return [
                f"Recipe: {shape}; trained on hard labels only (label-only twin, both stages' epochs).",
                f"Training: {budget_words(twin_training(spec))}; best dev checkpoint kept.",
            ]
        stage1, stage2 = spec.intermediate, spec.prediction
        lines = [
            f"Recipe: {shape}.",
            (
                f"Stage 1 (intermediate layers, {budget_words(stage1.training)}): MSE on projected embeddings "
                f"(x{stage1.alpha_embedding}) and hidden states (x{stage1.alpha_hidden}), attention "
                f"{stage1.attention_target} MSE (x{stage1.alpha_attention})."
            )
            if stage1.enabled
            else "Stage 1 skipped.",
            f"Stage 2 (prediction layer, {budget_words(stage2.training)}): {stage2.kd_loss} on logits at temperature "
            f"{stage2.temperature} (x{stage2.alpha_kd}) + CE (x{stage2.alpha_ce}); best dev checkpoint kept.",
        ]
        if facts.augmentation is not None:
            lines.append(augmentation_sentence(facts.augmentation))
        return lines
