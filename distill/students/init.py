"""Where a student's weights come from (``init_from``), shared by every recipe."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from distill.config import DistilBertStudentConfig, TinyBertStudentConfig
from distill.errors import StudentError
from distill.files import read_json
from distill.layout import EVAL_FILE


def initialisation_source(
    spec: DistilBertStudentConfig | TinyBertStudentConfig, teacher: PreTrainedModel, teacher_dir: Path, seed: int
) -> tuple[PreTrainedModel, str]:
    """The model a student's weights are taken from (``spec.init_from``) and a description of it.

    ``teacher``: the fine-tuned teacher itself. ``pretrained``: the weights the teacher was fine-tuned from (its
    ``eval.json``'s ``pretrained_from``), with a classification head drawn from ``seed``, so a student and its twin
    start identical.
    """
    if spec.init_from == "teacher":
        return teacher, "the fine-tuned teacher"
    record = read_json(teacher_dir / EVAL_FILE)
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
