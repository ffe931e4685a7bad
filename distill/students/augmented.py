"""The training set a distilled student learns from: the original rows, plus, when augmentation is on, the
augmented copies labelled by the teacher (for logit distillation only: a copy has no hard label)."""

from __future__ import annotations

from typing import Any

import numpy as np
from datasets import Dataset
from transformers import PreTrainedModel

from distill import distributed
from distill.config import AugmentationConfig
from distill.records import Augmentation
from distill.students.base import StudentContext


def training_rows(
    context: StudentContext, teacher: PreTrainedModel, augmentation: AugmentationConfig
) -> tuple[Dataset, np.ndarray | None, dict[str, Any] | None, Augmentation | None]:
    """The untokenised training rows; the teacher's logits on them when augmentation computed them; and, when
    augmented, the record for ``distill.json`` and the counts for the model card."""
    if not augmentation.enabled or context.spec.objective != "distill":
        return context.data.train, None, None, None
    from distill.augment import augment_training_set

    with distributed.main_process_first():  # rank 0 builds and caches the set; the others read the cache
        rows, record, logits = augment_training_set(
            context.data, teacher, context.teacher_dir, context.tokenizer, augmentation,
            context.config.data.max_length, context.config.seed, context.cache_dir, context.teacher_bf16,
        )  # fmt: skip
    return rows, logits, record, Augmentation.model_validate(record)


def augmented_words(augmentation: AugmentationConfig) -> str:
    """What a plan line adds for augmentation: ``" plus up to 20 augmented copies of each"`` (empty when off)."""
    if not augmentation.enabled:
        return ""
    copies = augmentation.copies
    return f" plus up to {copies} augmented {'copy' if copies == 1 else 'copies'} of each"


def augmentation_sentence(augmentation: Augmentation) -> str:
    """The model card's sentence on the copies made, kept and dropped."""
    return (
        f"Augmented data: {augmentation.kept:,} copies kept of {augmentation.generated:,} generated from "
        f"{augmentation.source_examples:,} rows ({augmentation.dropped_disagreeing:,} dropped because the teacher "
        "labelled them differently); copies teach through the teacher's outputs only, never with hard labels."
    )
