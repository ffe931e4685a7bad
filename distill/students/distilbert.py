"""DistilBERT-style students: the teacher's width, fewer layers copied from the teacher's, trained on a weighted sum
of logit distillation, hard-label cross-entropy and a hidden-state cosine term (or on hard labels alone)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from distill import distributed
from distill.cache import with_teacher_logits
from distill.config import DistilBertStudentConfig
from distill.data import TaskData, tokenize
from distill.mapping import hidden_state_pairs
from distill.objective import DistilBertObjective, LabelObjective, logits_only
from distill.students.augmented import augmentation_sentence, augmented_words, training_rows
from distill.students.base import Recipe, StudentContext, TrainedStudent, TrainingFacts, budget_words, examples
from distill.students.init import initialisation_source
from distill.students.truncate import build_distilbert_student
from distill.train import budget, train_model

LOSS_CONVENTION = "KL(teacher_T || student_T) x T^2"


def loss_weights(spec: DistilBertStudentConfig) -> dict[str, float]:
    """The weight of each loss term, by the name the training log gives it."""
    if spec.objective == "labels":
        return {"ce": 1.0}
    weights = {"kd": spec.alpha_kd, "ce": spec.alpha_ce, "cos": spec.alpha_cos}
    return weights | ({"att": spec.alpha_attention} if spec.alpha_attention else {})


class DistilBertRecipe(Recipe[DistilBertStudentConfig]):
    name = "distilbert"

    def plan(self, spec: DistilBertStudentConfig, data: TaskData) -> str:
        what = "training a label-only" if spec.objective == "labels" else "distilling a"
        extra = augmented_words(spec.augmentation) if spec.objective == "distill" else ""
        shape = f"{spec.num_layers}-layer DistilBERT-style student"
        return f"{what} {shape} on {examples(data)}{extra}, {budget(spec.training)}"

    def eval_batch_size(self, spec: DistilBertStudentConfig) -> int:
        return spec.training.eval_batch_size

    def train(self, context: StudentContext) -> TrainedStudent:
        config, spec, data = context.config, context.spec, context.data
        assert isinstance(spec, DistilBertStudentConfig)
        teacher = AutoModelForSequenceClassification.from_pretrained(context.teacher_dir, use_safetensors=True)
        layer_map = self.layer_map(spec, teacher.config)
        source, origin = initialisation_source(spec, teacher, context.teacher_dir, config.seed)
        torch.manual_seed(config.seed)
        student = build_distilbert_student(source, layer_map)
        del source
        teacher.to(distributed.local_device())  # labels the logit cache on the accelerator when there is one
        if spec.objective == "distill" and spec.alpha_attention > 0:  # only eager attention returns the maps
            teacher.set_attn_implementation("eager")
            student.set_attn_implementation("eager")
        objective: Any = (
            LabelObjective() if spec.objective == "labels" else DistilBertObjective.from_spec(spec, layer_map)
        )
        rows, known, augmentation, counts = training_rows(context, teacher, spec.augmentation)
        train_set = tokenize(rows, context.tokenizer, config.data.max_length)
        teacher_logits: dict[str, Any] = {"teacher_logits": "none" if not objective.needs_teacher else "online"}
        if logits_only(objective):
            train_set, teacher_logits = with_teacher_logits(
                train_set,
                teacher,
                context.teacher_dir,
                context.tokenizer,
                context.cache_dir,
                known=known,
                bf16=context.teacher_bf16,
            )
        result = train_model(
            student, train_set, context.validation, context.tokenizer, spec.training, context.student_dir,
            data.metrics, config.seed, objective, teacher=teacher if objective.needs_teacher else None,
        )  # fmt: skip
        record = {
            **teacher_logits,
            "layer_map": layer_map,
            "init_from": origin,
            "hidden_state_pairs": hidden_state_pairs(layer_map),
            "loss": {
                "kd": spec.kd_loss,
                "hidden": spec.hidden_loss,
                "temperature": spec.temperature,
                "weights": loss_weights(spec),
                "convention": LOSS_CONVENTION,
            },
            **({"augmentation": augmentation, "train_examples": len(train_set)} if augmentation else {}),
        }
        return TrainedStudent(result, teacher, TrainingFacts(layer_map, origin, counts), record)

    def describe(self, spec: DistilBertStudentConfig, facts: TrainingFacts) -> list[str]:
        trained = (
            "trained on hard labels only (label-only twin)"
            if spec.objective == "labels"
            else f"loss weights {loss_weights(spec)}, temperature {spec.temperature} ({LOSS_CONVENTION})"
        )
        lines = [
            f"Recipe: DistilBERT-style, {spec.num_layers} layers from layers {facts.layer_map} of {facts.origin}; "
            f"{trained}.",
            f"Training: {budget_words(spec.training)}; best dev checkpoint kept.",
        ]
        return lines + ([augmentation_sentence(facts.augmentation)] if facts.augmentation else [])
