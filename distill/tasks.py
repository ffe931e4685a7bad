"""Task presets: GLUE column names, label names and official metrics, one table entry per task."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskPreset:
    """Defaults for one task's files; every field can be overridden under ``data:`` in the config.

    ``label_names`` is ``None`` for regression. Integer labels index into ``label_names``; string labels
    are looked up in it.
    """

    text_column: str
    text_pair_column: str | None
    label_column: str
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    validation_file: str = "dev.tsv"


GLUE_TASKS: dict[str, TaskPreset] = {
    "sst2": TaskPreset("sentence", None, "label", ("negative", "positive"), ("accuracy",)),
    "rte": TaskPreset("sentence1", "sentence2", "label", ("entailment", "not_entailment"), ("accuracy",)),
    "cola": TaskPreset("sentence", None, "label", ("unacceptable", "acceptable"), ("matthews", "accuracy")),
    "mrpc": TaskPreset("#1 String", "#2 String", "Quality", ("not_equivalent", "equivalent"), ("f1", "accuracy")),
    "qqp": TaskPreset("question1", "question2", "is_duplicate", ("not_duplicate", "duplicate"), ("f1", "accuracy")),
    "qnli": TaskPreset("question", "sentence", "label", ("entailment", "not_entailment"), ("accuracy",)),
    "wnli": TaskPreset("sentence1", "sentence2", "label", ("not_entailment", "entailment"), ("accuracy",)),
    "mnli": TaskPreset(
        "sentence1",
        "sentence2",
        "gold_label",
        ("contradiction", "entailment", "neutral"),
        ("accuracy",),
        validation_file="dev_matched.tsv",
    ),
    "stsb": TaskPreset("sentence1", "sentence2", "score", None, ("pearson", "spearman")),
}
"""The first metric of each task is GLUE's main metric for it (F1 for MRPC and QQP, Matthews for CoLA): it selects
checkpoints, gates the teacher and states retention."""
