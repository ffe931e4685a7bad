"""The teacher-logit cache: hit, invalidation on teacher / data / tokenisation changes, and training that reads it."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distill.cache import with_teacher_logits
from distill.config import TrainingConfig
from distill.data import tokenize
from distill.evaluate import predict_logits
from distill.objective import DistilBertObjective, logits_only
from distill.train import TEACHER_LOGITS, train_model
from tests.conftest import make_tiny_bert, tiny_task


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    first = make_tiny_bert(tmp_path_factory.mktemp("t1"), num_layers=2, seed=0)
    second = make_tiny_bert(tmp_path_factory.mktemp("t2"), num_layers=2, seed=1)
    return first, second


def load(directory):
    return AutoModelForSequenceClassification.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(
        directory
    )


def test_cache_miss_then_hit_with_the_teachers_logits(tmp_path, teachers):
    teacher, tokenizer = load(teachers[0])
    train = tokenize(tiny_task(tmp_path / "d", 8, 40).train, tokenizer, 32)
    first, record = with_teacher_logits(train, teacher, teachers[0], tokenizer, tmp_path / "cache")
    assert record["cache"] == "miss"
    expected = predict_logits(teacher, train, tokenizer)
    assert np.allclose(np.asarray(first[TEACHER_LOGITS]), expected, atol=1e-5)
    again, hit = with_teacher_logits(train, teacher, teachers[0], tokenizer, tmp_path / "cache")
    assert hit["cache"] == "hit" and hit["cache_file"] == record["cache_file"]
    assert again[TEACHER_LOGITS] == first[TEACHER_LOGITS]


def test_known_logits_are_stored_instead_of_running_the_teacher(tmp_path, teachers):
    teacher, tokenizer = load(teachers[0])
    train = tokenize(tiny_task(tmp_path / "d", 8, 40).train, tokenizer, 32)
    known = np.arange(2 * len(train), dtype=np.float32).reshape(-1, 2)  # not what the teacher would say
    first, record = with_teacher_logits(train, teacher, teachers[0], tokenizer, tmp_path / "cache", known=known)
    assert record["cache"] == "miss" and record["computed_by"] == "augmentation filter"
    assert np.array_equal(np.asarray(first[TEACHER_LOGITS]), known)
    again, hit = with_teacher_logits(train, teacher, teachers[0], tokenizer, tmp_path / "cache")
    assert hit["cache"] == "hit" and np.array_equal(np.asarray(again[TEACHER_LOGITS]), known)
    with pytest.raises(ValueError, match="rows"):
        with_teacher_logits(train, teacher, teachers[0], tokenizer, tmp_path / "cache", known=known[:-1])


def test_cache_is_invalidated_by_teacher_data_and_tokenisation(tmp_path, teachers):
    teacher, tokenizer = load(teachers[0])
    task = tiny_task(tmp_path / "d", 8, 40)
    cache = tmp_path / "cache"
    base = with_teacher_logits(tokenize(task.train, tokenizer, 32), teacher, teachers[0], tokenizer, cache)[1]
    other_teacher, _ = load(teachers[1])
    files = {
        base["cache_file"],
        with_teacher_logits(tokenize(task.train, tokenizer, 32), other_teacher, teachers[1], tokenizer, cache)[1][
            "cache_file"
        ],
        with_teacher_logits(
            tokenize(task.train.select(range(30)), tokenizer, 32), teacher, teachers[0], tokenizer, cache
        )[1]["cache_file"],
        with_teacher_logits(tokenize(task.train, tokenizer, 8), teacher, teachers[0], tokenizer, cache)[1][
            "cache_file"
        ],
    }
    assert len(files) == 4, "teacher, data and max_length each change the key"
    assert len(list(cache.glob("teacher-logits-*.npy"))) == 4


def test_training_reads_cached_logits_instead_of_running_the_teacher(tmp_path, teachers):
    teacher, tokenizer = load(teachers[0])
    task = tiny_task(tmp_path / "d", 8, 40)
    train = tokenize(task.train, tokenizer, 32)
    validation = tokenize(task.validation, tokenizer, 32)
    cached, _ = with_teacher_logits(train, teacher, teachers[0], tokenizer, tmp_path / "cache")
    objective = DistilBertObjective(layer_map=[1], alpha_kd=1.0, alpha_ce=0.0, alpha_cos=0.0)
    assert logits_only(objective)
    assert not logits_only(DistilBertObjective(layer_map=[1], alpha_cos=1.0))
    calls = []
    teacher.register_forward_hook(lambda *args: calls.append(1))
    student_dir = make_tiny_bert(tmp_path / "student", num_layers=1, seed=3)
    student, _ = load(student_dir)
    training = TrainingConfig(epochs=1, batch_size=8, learning_rate=1e-3, save_steps=50, logging_steps=1)
    result = train_model(
        student, cached, validation, tokenizer, training, tmp_path / "w", ["accuracy"], 0, objective, teacher=teacher
    )
    assert calls == [], "the teacher never ran during training"
    assert any("loss_kd" in row for row in result.history)


def test_bf16_logits_are_kept_under_their_own_key_and_stay_close_to_fp32(tmp_path, teachers):
    teacher, tokenizer = load(teachers[0])
    train = tokenize(tiny_task(tmp_path / "d", 8, 40).train, tokenizer, 32)
    cache = tmp_path / "cache"
    fp32, plain = with_teacher_logits(train, teacher, teachers[0], tokenizer, cache)
    bf16, low = with_teacher_logits(train, teacher, teachers[0], tokenizer, cache, bf16=True)
    assert low["cache"] == "miss"
    assert low["teacher_logits_precision"] == "bf16" and plain["teacher_logits_precision"] == "fp32"
    assert low["cache_file"] != plain["cache_file"]  # an fp32 run never reads bf16 logits, nor the reverse
    fp32, bf16 = np.asarray(fp32[TEACHER_LOGITS]), np.asarray(bf16[TEACHER_LOGITS])
    assert not np.array_equal(fp32, bf16)  # autocast ran: bf16 rounds the matmuls
    assert np.abs(fp32 - bf16).max() < 0.05
    again = with_teacher_logits(train, teacher, teachers[0], tokenizer, cache, bf16=True)[1]
    assert again["cache"] == "hit" and again["cache_file"] == low["cache_file"]
