"""Unit tests for DistilBERT-style students built from a tiny random BERT teacher."""

from __future__ import annotations

import pytest
import torch

from distill.errors import StudentError
from distill.mapping import select_layers
from distill.students.stage import count_parameters
from distill.students.truncate import LAYER_KEY, build_distilbert_student


@pytest.fixture(scope="module")
def teacher(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).eval()


def layer_state(model, prefix: str, index: int) -> dict[str, torch.Tensor]:
    """The parameters and buffers of encoder layer ``index``, keyed by their name inside the layer."""
    marker = f"{prefix}.encoder.layer.{index}."
    return {name[len(marker) :]: value for name, value in model.state_dict().items() if name.startswith(marker)}


def batch(vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Three random sequences of 7 tokens; the first has two padding positions."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_size, (3, 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 5:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.mark.parametrize("layer_map", [[1, 3], [0, 2, 3], [3], [2, 0]])
def test_student_layers_are_copies_of_the_mapped_teacher_layers(teacher, layer_map):
    student = build_distilbert_student(teacher, layer_map)
    prefix = teacher.base_model_prefix
    assert student.config.num_hidden_layers == len(layer_map)
    assert len(getattr(student, prefix).encoder.layer) == len(layer_map)
    for student_index, teacher_index in enumerate(layer_map):
        student_layer, teacher_layer = (
            layer_state(student, prefix, student_index),
            layer_state(teacher, prefix, teacher_index),
        )
        assert student_layer and student_layer.keys() == teacher_layer.keys()
        for name, value in student_layer.items():
            assert torch.equal(value, teacher_layer[name]), (student_index, teacher_index, name)


def test_non_layer_weights_are_copied_unchanged(teacher):
    student = build_distilbert_student(teacher, [1, 3])
    teacher_state = teacher.state_dict()
    others = [name for name in student.state_dict() if LAYER_KEY.search(name) is None]
    assert any(name.startswith("classifier.") for name in others)
    assert any(".embeddings." in name for name in others)
    assert any(".pooler." in name for name in others)
    for name in others:
        assert torch.equal(student.state_dict()[name], teacher_state[name]), name


def test_student_is_an_independent_copy(teacher):
    student = build_distilbert_student(teacher, [0, 1])
    name = "classifier.weight"
    before = teacher.state_dict()[name].clone()
    with torch.no_grad():
        student.state_dict()[name].add_(1.0)
    assert torch.equal(teacher.state_dict()[name], before)


def test_student_is_a_plain_model_of_the_teachers_class(teacher):
    student = build_distilbert_student(teacher, [1, 3])
    assert type(student) is type(teacher)
    assert student.config.hidden_size == teacher.config.hidden_size
    assert student.config.num_labels == teacher.config.num_labels
    assert teacher.config.num_hidden_layers == 4, "building a student must not change the teacher's config"


def test_student_forward_and_hidden_states(teacher):
    student = build_distilbert_student(teacher, select_layers("uniform", 4, 2)).eval()
    with torch.no_grad():
        output = student(**batch(teacher.config.vocab_size), output_hidden_states=True)
    assert output.logits.shape == (3, 2)
    assert len(output.hidden_states) == 3
    assert output.hidden_states[-1].shape == (3, 7, teacher.config.hidden_size)
    assert torch.isfinite(output.logits).all()


def test_full_depth_identity_map_reproduces_the_teacher(teacher):
    student = build_distilbert_student(teacher, [0, 1, 2, 3]).eval()
    with torch.no_grad():
        expected = teacher(**batch(teacher.config.vocab_size, 1)).logits
        got = student(**batch(teacher.config.vocab_size, 1)).logits
    torch.testing.assert_close(got, expected)


def test_first_layers_map_reproduces_the_teachers_intermediate_states(teacher):
    student = build_distilbert_student(teacher, [0, 1]).eval()
    with torch.no_grad():
        teacher_out = teacher(**batch(teacher.config.vocab_size, 2), output_hidden_states=True)
        student_out = student(**batch(teacher.config.vocab_size, 2), output_hidden_states=True)
    for index in range(3):
        torch.testing.assert_close(student_out.hidden_states[index], teacher_out.hidden_states[index])


def test_parameter_count_shrinks_by_whole_layers(teacher):
    student = build_distilbert_student(teacher, [1, 3])
    per_layer = sum(value.numel() for value in teacher.bert.encoder.layer[0].parameters())
    assert count_parameters(student) < count_parameters(teacher)
    assert count_parameters(teacher) - count_parameters(student) == 2 * per_layer
    assert count_parameters(teacher) == sum(p.numel() for p in teacher.parameters())


def test_count_parameters_counts_tied_weights_once():
    shared = torch.nn.Linear(3, 3, bias=False)
    model = torch.nn.Sequential(shared, shared)
    assert count_parameters(model) == 9


def test_layer_key_matches_the_layer_index_only():
    match = LAYER_KEY.search("bert.encoder.layer.11.attention.self.query.weight")
    assert match is not None and match.group(1) == "11"
    assert LAYER_KEY.search("bert.embeddings.word_embeddings.weight") is None
    assert (
        LAYER_KEY.sub("3", "bert.encoder.layer.0.output.dense.bias", count=1)
        == "bert.encoder.layer.3.output.dense.bias"
    )


def test_out_of_range_map_is_rejected_before_building(teacher):
    with pytest.raises(StudentError):
        select_layers([0, 4], teacher.config.num_hidden_layers, 2)


# --- the recipe interface ------------------------------------------------------------------------------------------


def test_every_config_recipe_has_a_recipe_object():
    from distill.config import RECIPES as CONFIG_RECIPES
    from distill.students import RECIPES

    assert set(RECIPES) == set(CONFIG_RECIPES)
    assert all(recipe.name == name for name, recipe in RECIPES.items())


def test_distilbert_check_names_an_out_of_range_layer_map_and_training_raises_the_same(teacher):
    from distill.config import DistilBertStudentConfig
    from distill.students import RECIPES

    recipe = RECIPES["distilbert"]
    assert recipe.check(DistilBertStudentConfig(name="s", num_layers=2), teacher.config) == []
    (problem,) = recipe.check(DistilBertStudentConfig(name="s", num_layers=2, layer_selection=[0, 9]), teacher.config)
    assert "teacher layers [9]" in problem and "pick layers in that range" in problem
    (deep,) = recipe.check(DistilBertStudentConfig(name="s", num_layers=6), teacher.config)
    assert "set num_layers to at most 4" in deep
    with pytest.raises(StudentError, match="at most 4"):
        recipe.layer_map(DistilBertStudentConfig(name="s", num_layers=6), teacher.config)
    assert recipe.layer_map(DistilBertStudentConfig(name="s", num_layers=2), teacher.config) == [1, 3]


def test_distilbert_description_is_composed_from_the_spec_and_what_happened():
    from distill.config import DistilBertStudentConfig, label_only_twin
    from distill.students import RECIPES, TrainingFacts

    spec = DistilBertStudentConfig(
        name="s", num_layers=2, baseline=True, alpha_cos=1.0, training={"epochs": 3.0, "learning_rate": 1e-4}
    )
    facts = TrainingFacts([1, 3], "the fine-tuned teacher")
    recipe = RECIPES["distilbert"]
    assert recipe.describe(spec, facts) == [
        "Recipe: DistilBERT-style, 2 layers from layers [1, 3] of the fine-tuned teacher; loss weights "
        "{'kd': 0.5, 'ce': 0.5, 'cos': 1.0}, temperature 2.0 (KL(teacher_T || student_T) x T^2).",
        "Training: 3.0 epoch(s), batch 32, learning rate 0.0001; best dev checkpoint kept.",
    ]
    assert "trained on hard labels only (label-only twin)" in recipe.describe(label_only_twin(spec), facts)[0]
