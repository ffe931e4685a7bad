"""Student configs and initial weights: DistilBERT-style (teacher width, layers copied from the teacher)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from distill.config import Config, DistilBertStudentConfig
from distill.data import TaskData, tokenize
from distill.errors import StudentError
from distill.evaluate import evaluate_logits, predict_logits
from distill.files import save_array, write_json
from distill.mapping import select_layers
from distill.metrics import agreement, predictions_from_logits
from distill.objective import DistilBertObjective
from distill.train import remove_checkpoints, train_model

LAYER_KEY = re.compile(r"(?<=\.layer\.)(\d+)(?=\.)")
"""Matches the layer index in parameter names such as ``bert.encoder.layer.3.attention.self.query.weight``."""


def build_distilbert_student(teacher: PreTrainedModel, layer_map: list[int]) -> PreTrainedModel:
    """A student with the teacher's width and ``len(layer_map)`` layers, student layer ``k`` copied from
    teacher layer ``layer_map[k]``; embeddings, pooler and classifier are copied unchanged.

    The student is a plain ``transformers`` model of the teacher's class and attention implementation.
    """
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layer_map)
    student = AutoModelForSequenceClassification.from_config(config)
    teacher_state = teacher.state_dict()
    student_state: dict[str, torch.Tensor] = {}
    for name in student.state_dict():
        match = LAYER_KEY.search(name)
        source = name if match is None else LAYER_KEY.sub(str(layer_map[int(match.group(1))]), name, count=1)
        if source not in teacher_state:
            raise StudentError(
                f"cannot initialise student parameter {name}: the teacher has no {source}; "
                "use a BERT-family teacher with the standard layer layout"
            )
        student_state[name] = teacher_state[source].detach().clone()
    student.load_state_dict(student_state, strict=True)
    return student


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (tied weights counted once)."""
    return sum(parameter.numel() for parameter in model.parameters())


def run_student_stage(
    config: Config, student_config: DistilBertStudentConfig, data: TaskData, teacher_dir: Path, student_dir: Path
) -> dict[str, Any]:
    """Build one student from the saved teacher, distil it, evaluate it, and save it to ``student_dir``.

    Writes ``student_dir``: the HF model and tokenizer, ``distill.json`` (recipe, layer map, loss weights,
    training history), ``eval.json`` (dev metrics, agreement with the teacher) and ``dev_logits.npy``.
    Training state lives in ``student_dir/checkpoints`` until the student is saved, so a rerun resumes.
    Returns the contents of ``eval.json``.
    """
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    layer_map = select_layers(
        student_config.layer_selection, teacher.config.num_hidden_layers, student_config.num_layers
    )
    torch.manual_seed(config.seed)
    student = build_distilbert_student(teacher, layer_map)
    objective = DistilBertObjective(
        layer_map=layer_map,
        temperature=student_config.temperature,
        kd_loss=student_config.kd_loss,
        alpha_kd=student_config.alpha_kd,
        alpha_ce=student_config.alpha_ce,
        alpha_cos=student_config.alpha_cos,
    )
    train_set = tokenize(data.train, tokenizer, config.data.max_length)
    validation = tokenize(data.validation, tokenizer, config.data.max_length)
    result = train_model(
        student,
        train_set,
        validation,
        tokenizer,
        student_config.training,
        student_dir,
        data.metrics,
        config.seed,
        objective,
        teacher=teacher,
    )
    logits = predict_logits(
        result.model, validation, tokenizer, student_config.training.eval_batch_size, desc=student_config.name
    )
    labels = np.asarray(data.validation["label"])
    teacher_logits = np.load(teacher_dir / "dev_logits.npy")
    record = {
        "name": student_config.name,
        "metrics": evaluate_logits(logits, labels, data.metrics),
        "main_metric": data.main_metric,
        "agreement_with_teacher": agreement(
            predictions_from_logits(logits), predictions_from_logits(teacher_logits), data.is_regression
        ),
        "parameters": count_parameters(result.model),
        "teacher_parameters": count_parameters(teacher),
        "best_checkpoint": result.best,
    }
    result.model.save_pretrained(student_dir)
    tokenizer.save_pretrained(student_dir)
    save_array(student_dir / "dev_logits.npy", logits)
    write_json(
        student_dir / "distill.json",
        {
            "recipe": student_config.recipe,
            "student": student_config.model_dump(mode="json"),
            "teacher": str(teacher_dir),
            "layer_map": layer_map,
            "hidden_state_pairs": objective.hidden_pairs,
            "loss": {
                "kd": student_config.kd_loss,
                "temperature": student_config.temperature,
                "weights": {
                    "kd": student_config.alpha_kd,
                    "ce": student_config.alpha_ce,
                    "cos": student_config.alpha_cos,
                },
                "convention": "KL(teacher_T || student_T) x T^2",
            },
            "seed": config.seed,
            "resumed_from": result.resumed_from,
            "history": result.history,
        },
    )
    write_json(student_dir / "eval.json", record)
    remove_checkpoints(student_dir)
    return record
