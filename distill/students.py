"""Students: DistilBERT-style construction (teacher width, layers copied from the teacher), and the stage that
trains any student (DistilBERT- or TinyBERT-style, distilled or label-only), evaluates it and saves it."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from distill import distributed
from distill.cache import with_teacher_logits
from distill.config import Config, DistilBertStudentConfig, TinyBertStudentConfig
from distill.data import TaskData, tokenize
from distill.errors import StudentError
from distill.evaluate import evaluate_logits, predict_logits
from distill.files import copy_file, read_json, save_array, write_json
from distill.mapping import hidden_state_pairs, select_layers
from distill.metrics import agreement, predictions_from_logits
from distill.objective import DistilBertObjective, LabelObjective
from distill.train import remove_checkpoints, train_model

StudentSpec = DistilBertStudentConfig | TinyBertStudentConfig

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


def initialisation_source(
    spec: StudentSpec, teacher: PreTrainedModel, teacher_dir: Path, seed: int
) -> tuple[PreTrainedModel, str]:
    """The model a student's weights are taken from (``spec.init_from``) and a description of it.

    ``teacher``: the fine-tuned teacher itself. ``pretrained``: the weights the teacher was fine-tuned from (its
    ``eval.json``'s ``pretrained_from``), with a classification head drawn from ``seed``, so a student and its twin
    start identical.
    """
    if spec.init_from == "teacher":
        return teacher, "the fine-tuned teacher"
    record = read_json(teacher_dir / "eval.json")
    origin = record.get("pretrained_from")
    if origin is None:
        raise StudentError(
            f"student {spec.name} has init_from: pretrained, but the teacher {record.get('source')!r} came already "
            "fine-tuned, so its pretrained weights are unknown; set init_from: teacher, or set teacher.source to the "
            "pretrained model with teacher.finetune: always"
        )
    torch.manual_seed(seed)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            origin,
            num_labels=teacher.config.num_labels,
            id2label=teacher.config.id2label,
            label2id=teacher.config.label2id,
            ignore_mismatched_sizes=True,
            use_safetensors=True,
            attn_implementation=teacher.config._attn_implementation,
        )
    except (OSError, ValueError) as err:
        raise StudentError(
            f"student {spec.name} has init_from: pretrained, but the teacher's pretrained weights at {origin} could "
            f"not be loaded ({str(err).splitlines()[0]}); restore them or set init_from: teacher"
        ) from None
    return model, f"the pretrained weights the teacher was fine-tuned from ({origin}), new classification head"


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (tied weights counted once)."""
    return sum(parameter.numel() for parameter in model.parameters())


def logits_only(objective: Any) -> bool:
    """Whether ``objective`` needs the teacher's logits and nothing else from it (so they can be cached)."""
    return bool(objective.needs_teacher and not objective.needs_hidden_states and not objective.needs_attentions)


def _train_distilbert(
    config: Config,
    spec: DistilBertStudentConfig,
    data: TaskData,
    teacher_dir: Path,
    student_dir: Path,
    cache_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    validation: Dataset,
) -> tuple[Any, PreTrainedModel, dict[str, Any]]:
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    layer_map = select_layers(spec.layer_selection, teacher.config.num_hidden_layers, spec.num_layers)
    source, origin = initialisation_source(spec, teacher, teacher_dir, config.seed)
    torch.manual_seed(config.seed)
    student = build_distilbert_student(source, layer_map)
    del source
    teacher.to(distributed.local_device())  # labels the logit cache on the accelerator when there is one
    if spec.objective == "labels":
        objective: Any = LabelObjective()
        weights = {"ce": 1.0}
    else:
        objective = DistilBertObjective(
            layer_map=layer_map,
            temperature=spec.temperature,
            kd_loss=spec.kd_loss,
            alpha_kd=spec.alpha_kd,
            alpha_ce=spec.alpha_ce,
            alpha_cos=spec.alpha_cos,
        )
        weights = {"kd": spec.alpha_kd, "ce": spec.alpha_ce, "cos": spec.alpha_cos}
    train_set = tokenize(data.train, tokenizer, config.data.max_length)
    teacher_logits = {"teacher_logits": "none" if not objective.needs_teacher else "online"}
    if logits_only(objective):
        train_set, teacher_logits = with_teacher_logits(train_set, teacher, teacher_dir, tokenizer, cache_dir)
    result = train_model(
        student,
        train_set,
        validation,
        tokenizer,
        spec.training,
        student_dir,
        data.metrics,
        config.seed,
        objective,
        teacher=teacher if objective.needs_teacher else None,
    )
    t = spec.training
    budget = f"{t.epochs} epoch(s), batch {t.batch_size}, learning rate {t.learning_rate}; best dev checkpoint kept."
    trained = (
        "trained on hard labels only (label-only twin)"
        if spec.objective == "labels"
        else f"loss weights {weights}, temperature {spec.temperature} (KL(teacher_T || student_T) x T^2)"
    )
    record = {
        **teacher_logits,
        "description": [
            f"Recipe: DistilBERT-style, {spec.num_layers} layers from layers {layer_map} of {origin}; {trained}.",
            f"Training: {budget}",
        ],
        "layer_map": layer_map,
        "init_from": origin,
        "hidden_state_pairs": hidden_state_pairs(layer_map),
        "loss": {
            "kd": spec.kd_loss,
            "temperature": spec.temperature,
            "weights": weights,
            "convention": "KL(teacher_T || student_T) x T^2",
        },
    }
    return result, teacher, record


def run_student_stage(
    config: Config, spec: StudentSpec, data: TaskData, teacher_dir: Path, student_dir: Path, cache_dir: Path
) -> dict[str, Any] | None:
    """Build one student from the saved teacher, train it (distilled, or on labels only), evaluate it, and save it
    to ``student_dir``.

    Writes ``student_dir``: the HF model and tokenizer, ``distill.json`` (recipe, architecture, layer map, losses
    and weights, training history), ``eval.json`` (dev metrics, agreement with the teacher) and ``dev_logits.npy``.
    Training state lives in ``student_dir/checkpoints`` (TinyBERT: ``stage1/``, ``stage2/``) until the student is
    saved, so a rerun resumes. ``cache_dir`` holds reusable derived data (augmented training sets).
    Returns the contents of ``eval.json``; on a follower rank of a data-parallel run, None once its share of the
    training is done (rank 0 alone evaluates and writes).
    """
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    validation = tokenize(data.validation, tokenizer, config.data.max_length)
    inputs = (config, spec, data, teacher_dir, student_dir, cache_dir, tokenizer, validation)
    if spec.recipe == "tinybert":
        from distill.tinybert import train_tinybert

        result, teacher, record = train_tinybert(*inputs)
    else:
        result, teacher, record = _train_distilbert(*inputs)
    if not distributed.is_main():
        return None
    training = spec.prediction.training if spec.recipe == "tinybert" else spec.training
    logits = predict_logits(result.model, validation, tokenizer, training.eval_batch_size, desc=spec.name)
    labels = np.asarray(data.validation["label"])
    teacher_logits = np.load(teacher_dir / "dev_logits.npy")
    evaluation = {
        "name": spec.name,
        "recipe": spec.recipe,
        "objective": spec.objective,
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
            "recipe": spec.recipe,
            "objective": spec.objective,
            "student": spec.model_dump(mode="json"),
            "teacher": str(teacher_dir),
            **record,
            "seed": config.seed,
            "precision": result.precision,
            "resumed_from": result.resumed_from,
            "history": result.history,
        },
    )
    write_json(student_dir / "eval.json", evaluation)
    for work_dir in (student_dir, student_dir / "stage1", student_dir / "stage2"):
        remove_checkpoints(work_dir)
    return evaluation


def select_best_seed(student_dir: Path, seeds: list[int], metric: str) -> dict[str, Any]:
    """Copy the seed with the best dev ``metric`` (the first on ties) from ``student_dir/seeds/SEED`` into
    ``student_dir``; its ``eval.json`` gains ``selected_seed`` and every seed's metrics. Returns that record."""
    records = {seed: read_json(student_dir / "seeds" / str(seed) / "eval.json") for seed in seeds}
    best = max(seeds, key=lambda seed: (records[seed]["metrics"][metric], -seeds.index(seed)))
    source = student_dir / "seeds" / str(best)
    for path in sorted(source.iterdir()):
        if path.is_file() and path.name != "eval.json":
            copy_file(path, student_dir / path.name)
    record = {
        **records[best],
        "selected_seed": best,
        "selection": f"best dev {metric} of seeds {seeds}",
        "seeds": {str(seed): records[seed]["metrics"] for seed in seeds},
    }
    write_json(student_dir / "eval.json", record)
    return record
