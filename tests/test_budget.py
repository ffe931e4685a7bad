"""The budget rule: inputs (training rows, task kind, model width, what the config states) to chosen values."""

from __future__ import annotations

import datasets
import pytest
import torch
from transformers import PretrainedConfig

from distill.budget import augmentation, choose, learning_rate, resolve, resolve_student
from distill.config import AugmentationConfig, TeacherConfig, TrainingConfig, config_from_dict
from distill.data import TaskData
from distill.fingerprints import settings, stage_fingerprints
from distill.losses import NO_LABEL, hard_label_loss


def task(rows: int, pair: bool = False, labels: list[str] | None = ("no", "yes")) -> TaskData:
    columns = {"text": ["x"] * rows, "label": [0.5 if labels is None else 0] * rows}
    if pair:
        columns["text_pair"] = ["y"] * rows
    split = datasets.Dataset.from_dict(columns)
    metrics = ["pearson", "spearman"] if labels is None else ["accuracy"]
    return TaskData(split, split, None if labels is None else list(labels), metrics)


def job(**student) -> dict:
    return {
        "task": None,
        "data": {"train": "/d/train.tsv", "validation": "/d/dev.tsv", "text_column": "a", "label_column": "b"},
        "students": [{"name": "s", "baseline": True, **student}],
    }


@pytest.mark.parametrize(
    ("rows", "role", "augmented", "epochs", "eval_steps"),
    [
        (2490, "teacher", False, 8, 63),  # RTE: 78 steps an epoch, at least 600 steps
        (4000, "teacher", False, 5, 63),
        (16000, "teacher", False, 2, 100),  # large: the two-epoch floor, dev ten times
        (67349, "teacher", False, 2, 421),
        (100, "teacher", False, 20, 4),  # tiny: the 20-epoch cap
        (2490, "student", False, 13, 78),  # a student gets at least 1,000 steps
        (34860, "student", True, 1, 109),  # augmented: one pass can be enough
    ],
)
def test_length_and_evaluation_follow_the_training_set_size(rows, role, augmented, epochs, eval_steps):
    chosen, said = choose(TrainingConfig(), rows, 384, role, augmented)
    assert chosen.epochs == epochs and chosen.eval_steps == eval_steps
    assert chosen.patience == 3 and chosen.warmup_ratio == 0.1 and chosen.learning_rate == 1e-4
    assert said[0].startswith(f"{epochs} epoch")


@pytest.mark.parametrize(("width", "rate"), [(312, 1e-4), (384, 1e-4), (768, 5e-5), (1024, 2e-5), (None, 5e-5)])
def test_learning_rate_by_width(width, rate):
    assert learning_rate(width) == rate


def test_explicit_values_win_and_switch_off_early_stopping():
    given = TrainingConfig(epochs=2, learning_rate=3e-5)
    chosen, said = choose(given, 2490, 384, "teacher")
    assert chosen == given.model_copy(update={}) and said == []
    steps_only, _ = choose(TrainingConfig(max_steps=500), 2490, 384, "teacher")
    assert steps_only.max_steps == 500 and steps_only.eval_steps is None and steps_only.patience is None
    stated, _ = choose(TrainingConfig(eval_steps=7, patience=0), 2490, 384, "teacher")
    assert stated.eval_steps == 7 and stated.patience == 0 and stated.epochs == 8


@pytest.mark.parametrize(
    ("rows", "distilled", "given", "enabled", "copies"),
    [
        (2490, True, {}, True, 13),
        (1000, True, {}, True, 20),  # at most 20 copies
        (5749, True, {}, True, 6),
        (9999, True, {}, True, 4),
        (10000, True, {}, False, 20),  # at max_rows: off, with rule 2's unused copies
        (2490, False, {}, False, 20),  # a label-only model never augments
        (2490, True, {"enabled": False}, False, 20),
        (67349, True, {"enabled": True}, True, 1),
        (2490, True, {"copies": 4}, True, 4),
    ],
)
def test_augmentation_switch_and_copies(rows, distilled, given, enabled, copies):
    chosen = augmentation(AugmentationConfig(**given), rows, distilled)
    assert (chosen.enabled, chosen.copies) == (enabled, copies)


def test_resolve_budgets_the_student_on_the_augmented_size_and_its_twin_on_the_original_rows():
    config = config_from_dict(job())
    resolved, notes = resolve(config, task(2490, pair=True), None)
    student, twin = resolved.trained_students()
    assert student.augmentation.enabled and student.augmentation.copies == 13
    assert student.training.epochs == 1  # 34,860 rows
    assert student.alpha_cos == 0.0  # no hidden-state term on augmented rows: the teacher would run on each
    assert twin.training.epochs == 13 and twin.objective == "labels"
    assert resolved.teacher.training.epochs == 8
    assert notes[0].startswith("teacher: 8 epochs") and "2,490 training pairs" in notes[0]
    assert any("augmentation on (13 copies" in note for note in notes)
    assert any(note.startswith("s-twin: 13 epochs") for note in notes)
    again, more = resolve(resolved, task(2490, pair=True), None)
    assert again == resolved and more == []  # resolving twice changes nothing


@pytest.mark.parametrize(
    ("rows", "teacher", "rates", "training_rate"),
    [
        (2490, {}, [1e-4, 2e-5], 1e-4),  # small: the width's rate and a fifth of it
        (9999, {}, [1e-4, 2e-5], 1e-4),
        (10000, {}, None, 1e-4),  # large enough: one rate
        (2490, {"training": {"learning_rate": 3e-5}}, None, 3e-5),  # a stated rate is the only one
        (2490, {"learning_rates": [5e-5, 1e-5, 5e-6]}, [5e-5, 1e-5, 5e-6], 5e-5),  # stated candidates are kept
        (2490, {"finetune": "never"}, None, 1e-4),  # nothing is fine-tuned
        (2490, {"architectures": ["BertForSequenceClassification"]}, None, 1e-4),  # used as given under auto
        (2490, {"architectures": ["BertForSequenceClassification"], "finetune": "always"}, [1e-4, 2e-5], 1e-4),
    ],
)
def test_the_teacher_tries_two_learning_rates_on_small_sets(rows, teacher, rates, training_rate):
    architectures = teacher.pop("architectures", ["BertModel"])
    config = config_from_dict({**job(), "teacher": teacher})
    teacher_config = PretrainedConfig(hidden_size=384, architectures=architectures)
    resolved, notes = resolve(config, task(rows, pair=True), teacher_config)
    assert resolved.teacher.learning_rates == rates
    assert resolved.teacher.training.learning_rate == training_rate
    seeds = [(0, rate) for rate in rates] if rates else [(0, None)]
    assert resolved.teacher_candidates() == seeds
    chosen = "learning rates 0.0001 and 2e-05 tried (the better on dev kept)"
    assert any(chosen in note for note in notes) == (rates == [1e-4, 2e-5])
    assert resolve(resolved, task(rows, pair=True), teacher_config) == (resolved, [])


def test_teacher_learning_rates_conflicting_with_the_training_rate_are_refused():
    with pytest.raises(ValueError, match="set one of them"):
        TeacherConfig(learning_rates=[1e-4, 2e-5], training={"learning_rate": 3e-5})
    with pytest.raises(ValueError, match="repeats a rate"):
        TeacherConfig(learning_rates=[1e-4, 1e-4])
    assert TeacherConfig(learning_rates=[1e-4, 2e-5], training={"learning_rate": 1e-4}).learning_rates == [1e-4, 2e-5]


def test_a_stated_budget_is_kept_for_the_twin_too():
    config = config_from_dict(job(training={"epochs": 2, "learning_rate": 1e-4}, augmentation={"enabled": False}))
    resolved, _ = resolve(config, task(2490), None)
    student, twin = resolved.trained_students()
    assert student.training.epochs == twin.training.epochs == 2 and student.twin_training is None
    assert student.alpha_cos == 1.0  # not augmented: the hidden-state term as before


def test_a_stage_run_alone_chooses_what_the_pipeline_chooses():
    config = config_from_dict(job())
    data = task(300, labels=None)
    through_pipeline = resolve(config, data, None)[0].trained_students()[1]
    _, alone = resolve_student(config, config.trained_students()[1], data, None)
    assert alone == through_pipeline


def test_stating_rule_2_defaults_keeps_the_old_fingerprint_and_leaving_them_to_distill_changes_it():
    old_defaults = {"epochs": 2.0, "learning_rate": 5e-5}
    stated = config_from_dict({**job(augmentation={"enabled": False}), "teacher": {"training": old_defaults}})
    assert settings(stated.teacher) == {}  # as rule 2 hashed a teacher left at its defaults
    chosen = resolve(config_from_dict(job(augmentation={"enabled": False})), task(2490), None)[0]
    assert settings(chosen.teacher)["training"]["epochs"] == 8.0
    assert stage_fingerprints(chosen)["teacher"] != stage_fingerprints(stated)["teacher"]
    # the twin's budget shapes the twin alone: the student's fingerprint does not hash it
    a = resolve(config_from_dict(job()), task(2490), None)[0]
    twin = TrainingConfig(epochs=1, learning_rate=1e-4)
    b = a.model_copy(update={"students": [a.students[0].model_copy(update={"twin_training": twin})]})
    assert stage_fingerprints(a)["student:s"] == stage_fingerprints(b)["student:s"]
    assert stage_fingerprints(a)["student:s-twin"] != stage_fingerprints(b)["student:s-twin"]


def test_a_twin_budget_given_in_part_is_completed_for_the_original_rows():
    config = config_from_dict(job(twin_training={"precision": "bf16", "epochs": 4}))
    twin = resolve(config, task(2490), None)[0].trained_students()[1]
    assert twin.training.precision == "bf16" and twin.training.epochs == 4
    assert twin.training.learning_rate == 5e-5  # the width is unknown here (no teacher config): as a 768-wide model


def test_rows_without_a_hard_label_are_skipped_by_the_label_term():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]], requires_grad=True)
    labelled = hard_label_loss(logits[:2], torch.tensor([0, 1]))
    assert torch.isclose(hard_label_loss(logits, torch.tensor([0, 1, NO_LABEL])), labelled)
    none = hard_label_loss(logits, torch.full((3,), NO_LABEL))
    none.backward()
    assert none.item() == 0.0 and logits.grad is not None
    scores = torch.tensor([[1.0], [2.0], [9.0]])
    assert torch.isclose(hard_label_loss(scores, torch.tensor([1.5, 2.0, float("nan")])), torch.tensor(0.125))
