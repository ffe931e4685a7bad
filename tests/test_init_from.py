"""``init_from: pretrained``: student layers taken from the weights the teacher was fine-tuned from, found through
the teacher's eval.json (also across an earlier distill run), identical for a student and its twin."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForSequenceClassification

from distill.config import DistilBertStudentConfig, TinyBertStudentConfig, label_only_twin
from distill.errors import StudentError
from distill.files import write_json
from distill.students.init import initialisation_source
from distill.students.tinybert import build_tinybert_student
from distill.students.truncate import build_distilbert_student
from distill.teacher import pretrained_origin

QUERY = "bert.encoder.layer.{}.attention.self.query.weight"


@pytest.fixture
def fine_tuned(tmp_path, tiny_encoder_dir):
    """A 'fine-tuned' teacher made from the tiny encoder (every weight moved), recorded as fine-tuned here."""
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir, num_labels=2)
    with torch.no_grad():
        for parameter in teacher.parameters():
            parameter.add_(0.5)
    teacher_dir = tmp_path / "teacher"
    teacher.save_pretrained(teacher_dir)
    write_json(
        teacher_dir / "eval.json", {"source": "x", "finetuned_here": True, "pretrained_from": str(tiny_encoder_dir)}
    )
    return teacher, teacher_dir


def pretrained_state(directory):
    return AutoModelForSequenceClassification.from_pretrained(directory, num_labels=2).state_dict()


def test_distilbert_student_and_twin_start_from_the_pretrained_layers(fine_tuned, tiny_encoder_dir):
    teacher, teacher_dir = fine_tuned
    spec = DistilBertStudentConfig(name="d", num_layers=2, baseline=True, init_from="pretrained")
    starts = []
    for each in (spec, label_only_twin(spec)):
        source, origin = initialisation_source(each, teacher, teacher_dir, seed=3)
        starts.append(build_distilbert_student(source, [1, 3]).state_dict())
        assert str(tiny_encoder_dir) in origin
    student, twin = starts
    assert all(torch.equal(value, twin[key]) for key, value in student.items())  # new head included
    pretrained = pretrained_state(tiny_encoder_dir)
    assert torch.equal(student[QUERY.format(1)], pretrained[QUERY.format(3)])
    assert not torch.equal(student[QUERY.format(1)], teacher.state_dict()[QUERY.format(3)])
    default, origin = initialisation_source(spec.model_copy(update={"init_from": "teacher"}), teacher, teacher_dir, 3)
    assert default is teacher and origin == "the fine-tuned teacher"


def test_tinybert_student_and_twin_are_truncated_from_the_pretrained_weights(fine_tuned, tiny_encoder_dir):
    teacher, teacher_dir = fine_tuned
    spec = TinyBertStudentConfig(
        name="t", recipe="tinybert", num_layers=2, hidden_size=24, num_attention_heads=3, intermediate_size=48,
        baseline=True, init_from="pretrained",
    )  # fmt: skip
    built = []
    for each in (spec, label_only_twin(spec)):
        source, _ = initialisation_source(each, teacher, teacher_dir, seed=3)
        built.append(build_tinybert_student(source, each, [1, 3], seed=3))
    (student, record), (twin, _) = built
    assert all(torch.equal(value, twin.state_dict()[key]) for key, value in student.state_dict().items())
    pretrained = pretrained_state(tiny_encoder_dir)
    hidden = record["hidden_units"]
    assert torch.equal(
        student.state_dict()["bert.embeddings.word_embeddings.weight"],
        pretrained["bert.embeddings.word_embeddings.weight"][:, hidden],
    )


def test_the_pretrained_origin_is_recorded_and_followed_across_runs(tmp_path):
    assert pretrained_origin("bundled/model", finetuned_here=True) == "bundled/model"
    assert pretrained_origin(str(tmp_path), finetuned_here=False) is None  # a teacher from elsewhere
    write_json(tmp_path / "eval.json", {"finetuned_here": True, "resolved_from": "/pre"})  # an older distill run
    assert pretrained_origin(str(tmp_path), finetuned_here=False) == "/pre"
    write_json(tmp_path / "eval.json", {"finetuned_here": False, "pretrained_from": "/first"})
    assert pretrained_origin(str(tmp_path), finetuned_here=False) == "/first"


def test_pretrained_init_without_a_known_origin_is_refused(fine_tuned):
    teacher, teacher_dir = fine_tuned
    write_json(
        teacher_dir / "eval.json", {"source": "org/sst2-model", "finetuned_here": False, "pretrained_from": None}
    )
    spec = DistilBertStudentConfig(name="d", init_from="pretrained")
    with pytest.raises(StudentError, match="came already fine-tuned.*init_from: teacher"):
        initialisation_source(spec, teacher, teacher_dir, seed=0)
    with pytest.raises(ValidationError, match="init: truncate"):
        TinyBertStudentConfig(name="t", recipe="tinybert", init="random", init_from="pretrained")
