"""TinyBERT-style students: losses by hand, truncation rule, projections, score attention, stages, twins."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

from distill.config import TinyBertStudentConfig, config_from_dict, label_only_twin
from distill.errors import ConfigError, StudentError
from distill.losses import attention_mse, group_heads
from distill.objective import IntermediateObjective
from distill.students.attention import SCORES_ATTENTION, ProjectedStudent
from distill.students.tinybert import build_tinybert_student, total_epochs
from distill.students.truncate import student_config_for, truncate_teacher

# One sequence of three tokens, the last one padding; one head. Only the 2 x 2 block of real (query, key) pairs
# counts: differences 1, 0, 0, -2 -> squared 1, 0, 0, 4 -> mean 5 / 4.
STUDENT_ATT = torch.tensor([[[[1.0, 2.0, 9.0], [3.0, 4.0, 9.0], [9.0, 9.0, 9.0]]]])
TEACHER_ATT = torch.tensor([[[[0.0, 2.0, -5.0], [3.0, 6.0, -5.0], [-5.0, -5.0, -5.0]]]])
MASK = torch.tensor([[1, 1, 0]])


def tiny_teacher(layers: int = 4, hidden: int = 32, heads: int = 4, ffn: int = 64, seed: int = 0):
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=60,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=64,
        num_labels=2,
        attn_implementation="eager",
    )
    return BertForSequenceClassification(config).eval()


STAGE_BUDGETS = {
    "intermediate": {"training": {"epochs": 2.0, "learning_rate": 5e-5}},
    "prediction": {"training": {"epochs": 3.0, "learning_rate": 5e-5}},
}
"""Stated budgets (distill.budget chooses unset ones from the data, which these tests have none of)."""


def spec(**overrides) -> TinyBertStudentConfig:
    values = {"name": "t", "recipe": "tinybert", "num_layers": 2, "hidden_size": 24, "num_attention_heads": 4}
    values.update({"intermediate_size": 48, **STAGE_BUDGETS})
    for key, value in overrides.items():
        values[key] = {**values[key], **value} if key in STAGE_BUDGETS else value
    return TinyBertStudentConfig(**values)


def batch(seed: int = 1, size: int = 3, seq: int = 7):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (size, seq), generator=generator)
    mask = torch.ones(size, seq, dtype=torch.long)
    mask[1, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


# --- losses ------------------------------------------------------------------------------------------------------


def test_attention_mse_by_hand_excludes_padded_queries_and_keys():
    assert attention_mse(STUDENT_ATT, TEACHER_ATT, MASK).item() == pytest.approx(5 / 4)


def test_attention_mse_averages_over_heads():
    student = torch.cat([STUDENT_ATT, torch.zeros_like(STUDENT_ATT)], dim=1)
    teacher = torch.cat([TEACHER_ATT, torch.zeros_like(TEACHER_ATT)], dim=1)
    assert attention_mse(student, teacher, MASK).item() == pytest.approx(5 / 8)


def test_attention_mse_gradient_reaches_the_student_only():
    student = STUDENT_ATT.clone().requires_grad_(True)
    teacher = TEACHER_ATT.clone().requires_grad_(True)
    attention_mse(student, teacher, MASK).backward()
    assert teacher.grad is None
    # d/ds of (s - t)^2 / 4 on real pairs: 2 * (1, 0; 0, -2) / 4; zero on padded pairs
    expected = torch.zeros(3, 3)
    expected[0, 0], expected[1, 1] = 0.5, -1.0
    assert torch.allclose(student.grad[0, 0], expected)


def test_group_heads_averages_consecutive_teacher_heads():
    teacher = torch.tensor([1.0, 3.0, 5.0, 7.0]).reshape(1, 4, 1, 1)
    assert group_heads(teacher, 2).flatten().tolist() == [2.0, 6.0]
    assert group_heads(teacher, 4) is teacher
    with pytest.raises(ValueError, match="4 teacher attention heads onto 3"):
        group_heads(teacher, 3)


def test_intermediate_objective_by_hand():
    # student 1 layer facing teacher layer 1 (of 2): pairs (0, 0) and (1, 2)
    zeros = torch.zeros(1, 3, 2)
    s_hidden = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    t_hidden = torch.tensor([[[3.0, 0.0], [1.0, 0.0], [-9.0, 2.0]]])  # per-token MSE 2 and 1 -> 1.5
    student = SequenceClassifierOutput(
        logits=torch.zeros(1, 2), hidden_states=(zeros, s_hidden), attentions=(STUDENT_ATT,)
    )
    teacher = SequenceClassifierOutput(
        logits=torch.zeros(1, 2),
        hidden_states=(zeros, zeros + 7, t_hidden),
        attentions=(torch.zeros_like(TEACHER_ATT), TEACHER_ATT),
    )
    objective = IntermediateObjective(layer_map=[1], alpha_embedding=2.0, alpha_hidden=3.0, alpha_attention=4.0)
    total, terms = objective(student, teacher, torch.tensor([1]), MASK)
    assert terms["emb"].item() == 0.0
    assert terms["hid_1"].item() == pytest.approx(1.5)
    assert terms["att_1"].item() == pytest.approx(5 / 4)
    assert total.item() == pytest.approx(2 * 0 + 3 * 1.5 + 4 * 5 / 4)


def test_intermediate_objective_groups_teacher_heads_for_fewer_student_heads():
    teacher_att = torch.cat([TEACHER_ATT, TEACHER_ATT + 2], dim=1)  # mean of the two heads = TEACHER_ATT + 1
    student = SequenceClassifierOutput(logits=torch.zeros(1, 2), attentions=(STUDENT_ATT + 1,))
    teacher = SequenceClassifierOutput(logits=torch.zeros(1, 2), attentions=(teacher_att,))
    objective = IntermediateObjective(layer_map=[0], alpha_embedding=0, alpha_hidden=0, student_heads=1)
    total, terms = objective(student, teacher, torch.tensor([1]), MASK)
    assert set(terms) == {"att_1", "attention"}
    assert total.item() == pytest.approx(5 / 4)


def test_intermediate_objective_requests_only_what_its_weights_use():
    assert not IntermediateObjective(layer_map=[0], alpha_attention=0).needs_attentions
    objective = IntermediateObjective(layer_map=[0], alpha_embedding=0, alpha_hidden=0)
    assert objective.needs_attentions and not objective.needs_hidden_states


# --- score attention ---------------------------------------------------------------------------------------------


def test_score_attention_gives_eager_outputs_and_pre_softmax_scores():
    model = tiny_teacher()
    inputs = batch()
    eager = model(**inputs, output_attentions=True)
    model.set_attn_implementation(SCORES_ATTENTION)
    scores = model(**inputs, output_attentions=True)
    assert torch.allclose(eager.logits, scores.logits, atol=1e-6)
    keys = inputs["attention_mask"][:, None, None, :] == 0
    for probs, raw in zip(eager.attentions, scores.attentions, strict=True):
        assert not torch.allclose(raw, probs)
        assert torch.allclose(raw.masked_fill(keys, float("-inf")).softmax(-1), probs, atol=1e-6)


# --- initialisation ----------------------------------------------------------------------------------------------


def test_truncation_to_the_same_shape_reproduces_the_teacher():
    teacher = tiny_teacher()
    student = BertForSequenceClassification(
        student_config_for(teacher, spec(num_layers=4, hidden_size=32, intermediate_size=64))
    )
    truncate_teacher(teacher, student, [0, 1, 2, 3])
    student.eval()
    inputs = batch()
    assert torch.allclose(student(**inputs).logits, teacher(**inputs).logits, atol=1e-5)


def test_truncated_weights_are_submatrices_of_the_mapped_teacher_layers():
    teacher = tiny_teacher()
    student, record = build_tinybert_student(teacher, spec(), [1, 3], seed=0)
    hidden = record["hidden_units"]
    assert len(hidden) == 24 and hidden == sorted(hidden)
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(
        s["bert.embeddings.word_embeddings.weight"], t["bert.embeddings.word_embeddings.weight"][:, hidden]
    )
    w1 = t["bert.encoder.layer.3.intermediate.dense.weight"][:, hidden]
    s1 = s["bert.encoder.layer.1.intermediate.dense.weight"]
    assert s1.shape == (48, 24)
    assert all(any(torch.equal(row, candidate) for candidate in w1) for row in s1)  # every row is a teacher row
    # the kept hidden units are the embedding columns of largest norm
    norms = t["bert.embeddings.word_embeddings.weight"].norm(dim=0)
    assert norms[hidden].min() >= norms[[i for i in range(32) if i not in hidden]].max()


def test_truncation_refuses_a_wider_student():
    teacher = tiny_teacher()
    with pytest.raises(StudentError, match="hidden_size 40 > 32.*init: random"):
        build_tinybert_student(teacher, spec(hidden_size=40, num_attention_heads=4), [1, 3], seed=0)


def test_random_init_is_reproducible_and_differs_from_truncation():
    teacher = tiny_teacher()
    first, _ = build_tinybert_student(teacher, spec(init="random"), [1, 3], seed=3)
    second, _ = build_tinybert_student(teacher, spec(init="random"), [1, 3], seed=3)
    truncated, _ = build_tinybert_student(teacher, spec(), [1, 3], seed=3)
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(first.state_dict()[name], second.state_dict()[name])
    assert not torch.equal(first.state_dict()[name], truncated.state_dict()[name])


def test_checkpoint_init_loads_a_saved_student_and_checks_its_shape(tmp_path):
    teacher = tiny_teacher()
    saved, _ = build_tinybert_student(teacher, spec(), [1, 3], seed=0)
    saved.save_pretrained(tmp_path / "general")
    loaded, record = build_tinybert_student(
        teacher, spec(init="checkpoint", init_checkpoint=str(tmp_path / "general")), [1, 3], seed=0
    )
    assert record["init"] == "checkpoint"
    assert all(torch.equal(value, saved.state_dict()[key]) for key, value in loaded.state_dict().items())
    with pytest.raises(StudentError, match="num_hidden_layers 2 \\(config says 3\\)"):
        build_tinybert_student(
            teacher, spec(num_layers=3, init="checkpoint", init_checkpoint=str(tmp_path / "general")), [0, 1, 3], 0
        )
    with pytest.raises(StudentError, match="not a saved model directory"):
        build_tinybert_student(teacher, spec(init="checkpoint", init_checkpoint=str(tmp_path / "nope")), [1, 3], 0)


def test_twin_shares_its_students_initial_weights_exactly():
    teacher = tiny_teacher()
    student_spec = spec(baseline=True)
    twin_spec = label_only_twin(student_spec)
    assert (twin_spec.name, twin_spec.objective, twin_spec.baseline) == ("t-twin", "labels", False)
    for init in ("truncate", "random"):
        a, _ = build_tinybert_student(teacher, student_spec.model_copy(update={"init": init}), [1, 3], seed=5)
        b, _ = build_tinybert_student(teacher, twin_spec.model_copy(update={"init": init}), [1, 3], seed=5)
        assert all(torch.equal(value, b.state_dict()[key]) for key, value in a.state_dict().items())
    assert (
        total_epochs(student_spec)
        == student_spec.intermediate.training.epochs + student_spec.prediction.training.epochs
    )


# --- projections -------------------------------------------------------------------------------------------------


def test_projected_student_maps_every_hidden_state_to_the_teacher_width(tmp_path):
    teacher = tiny_teacher()
    student, _ = build_tinybert_student(teacher, spec(), [1, 3], seed=0)
    wrapper = ProjectedStudent(student, teacher_width=32)
    out = wrapper(**batch(), output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 3
    assert all(h.shape == (3, 7, 32) for h in out.hidden_states)
    assert out.attentions[0].shape == (3, 4, 7, 7)
    assert wrapper.embedding_projection.weight.shape == (32, 24)
    wrapper.save_pretrained(tmp_path / "final")
    projections = load_file(tmp_path / "final" / "projections.safetensors")
    assert set(projections) == {
        "embedding_projection.weight",
        "embedding_projection.bias",
        "hidden_projection.weight",
        "hidden_projection.bias",
    }
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "final")
    assert not any("projection" in name for name in exported.state_dict())
    assert exported.config.hidden_size == 24


# --- config ------------------------------------------------------------------------------------------------------


def raw_with(student: dict) -> dict:
    return {"data": {"train": "/d/train.tsv", "validation": "/d/dev.tsv"}, "students": [student]}


def test_tinybert_config_defaults_are_tinybert4():
    config = config_from_dict(raw_with({"name": "tiny", "recipe": "tinybert"}))
    student = config.students[0]
    assert isinstance(student, TinyBertStudentConfig)
    assert (student.num_layers, student.hidden_size, student.num_attention_heads, student.intermediate_size) == (
        4,
        312,
        12,
        1200,
    )


def test_baseline_adds_a_label_only_twin_to_the_training_plan():
    config = config_from_dict(raw_with({"name": "tiny", "recipe": "tinybert", "baseline": True}))
    assert [(s.name, s.objective) for s in config.trained_students()] == [("tiny", "distill"), ("tiny-twin", "labels")]


@pytest.mark.parametrize(
    "student, fragment",
    [
        ({"hidden_size": 100, "num_attention_heads": 12}, "not a multiple of num_attention_heads"),
        ({"init": "checkpoint"}, "init_checkpoint exactly when init is checkpoint"),
        ({"init_checkpoint": "/x"}, "init_checkpoint exactly when init is checkpoint"),
        ({"layer_selection": [0, 1]}, "layer_selection lists 2 layers but num_layers is 4"),
        ({"baseline": True, "objective": "labels"}, "needs objective: distill"),
        ({"intermediate": {"alpha_embedding": 0, "alpha_hidden": 0, "alpha_attention": 0}}, "at least one"),
        ({"intermediate": {"attention_target": "logits"}}, "students.0.intermediate.attention_target"),
        ({"hidden": 312}, "students.0.hidden: unknown key"),
    ],
)
def test_bad_tinybert_configs_are_explained(student, fragment):
    with pytest.raises(ConfigError, match=fragment):
        config_from_dict(raw_with({"name": "tiny", "recipe": "tinybert", **student}))


def test_twin_name_clash_is_refused():
    raw = raw_with({"name": "tiny", "recipe": "tinybert", "baseline": True})
    raw["students"].append({"name": "tiny-twin"})
    with pytest.raises(ConfigError, match="repeated: \\['tiny-twin'\\]"):
        config_from_dict(raw)


def test_head_count_that_does_not_divide_the_teachers_is_refused_before_training(tmp_path):
    from transformers import AutoTokenizer

    from distill.config import config_from_dict
    from distill.data import tokenize
    from distill.students.base import StudentContext
    from distill.students.tinybert import train_tinybert
    from tests.conftest import make_tiny_bert, tiny_task

    teacher_dir = make_tiny_bert(tmp_path / "teacher", num_layers=2)  # 4 heads
    data = tiny_task(tmp_path / "data", dev_rows=4)
    raw = raw_with({"name": "t", "recipe": "tinybert", "num_layers": 1, "hidden_size": 24, "num_attention_heads": 3})
    config = config_from_dict(raw)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    validation = tokenize(data.validation, tokenizer, 32)
    student, cache = tmp_path / "student", tmp_path / "cache"
    with pytest.raises(StudentError, match="teacher's 4 heads do not split evenly into the student's 3"):
        train_tinybert(
            StudentContext(config, config.students[0], data, teacher_dir, student, cache, tokenizer, validation)
        )
    assert not (tmp_path / "student").exists()


# --- checks from the teacher's config alone, and the description ----------------------------------------------------


def test_tinybert_check_lists_every_problem_the_teachers_config_reveals(tmp_path):
    from distill.students import RECIPES

    recipe, teacher = RECIPES["tinybert"], tiny_teacher()  # 4 layers, hidden 32, 4 heads, FFN 64
    assert recipe.check(spec(), teacher.config) == []
    problems = recipe.check(
        spec(layer_selection=[0, 7], hidden_size=48, num_attention_heads=3, intermediate_size=48), teacher.config
    )
    assert len(problems) == 3
    assert "teacher layers [7]" in problems[0]
    assert "teacher's 4 heads do not split evenly into the student's 3" in problems[1]
    assert "init: truncate can only shrink the teacher, but the student has hidden_size 48 > 32" in problems[2]
    # no attention term: the head counts need not divide
    no_attention = spec(num_attention_heads=3, intermediate={"alpha_attention": 0})
    assert recipe.check(no_attention, teacher.config) == []


def test_tinybert_check_reads_an_init_checkpoints_config(tmp_path):
    from distill.students import RECIPES

    recipe, teacher = RECIPES["tinybert"], tiny_teacher()
    saved, _ = build_tinybert_student(teacher, spec(), [1, 3], seed=0)
    saved.save_pretrained(tmp_path / "general")
    good = spec(init="checkpoint", init_checkpoint=str(tmp_path / "general"))
    assert recipe.check(good, teacher.config) == []
    (wrong,) = recipe.check(good.model_copy(update={"num_layers": 3, "layer_selection": "uniform"}), teacher.config)
    assert "num_hidden_layers 2 (config says 3)" in wrong and "set the student's shape to the checkpoint's" in wrong
    (missing,) = recipe.check(spec(init="checkpoint", init_checkpoint=str(tmp_path / "nope")), teacher.config)
    assert "not a saved model directory (no config.json)" in missing


def test_tinybert_description_says_what_each_stage_did_and_what_augmentation_kept():
    from distill.records import Augmentation
    from distill.students import RECIPES, TrainingFacts

    recipe = RECIPES["tinybert"]
    augmentation = Augmentation(source_examples=10, generated=20, kept=15, dropped_disagreeing=5)
    lines = recipe.describe(spec(), TrainingFacts([1, 3], "the fine-tuned teacher", augmentation))
    assert lines[0] == (
        "Recipe: TinyBERT-style, 2 layers, hidden 24, 4 heads, FFN 48; init truncate from layers [1, 3] of the "
        "fine-tuned teacher."
    )
    assert lines[1].startswith("Stage 1 (intermediate layers, 2.0 epoch(s), batch 32, learning rate 5e-05)")
    assert lines[2].startswith("Stage 2 (prediction layer, 3.0 epoch(s)")
    assert lines[3] == (
        "Augmented data: 15 copies kept of 20 generated from 10 rows (5 dropped because the teacher labelled them "
        "differently); copies teach through the teacher's outputs only, never with hard labels."
    )
    twin = recipe.describe(label_only_twin(spec(baseline=True)), TrainingFacts([1, 3], "the fine-tuned teacher"))
    assert twin[1] == "Training: 5.0 epoch(s), batch 32, learning rate 5e-05; best dev checkpoint kept."
    skipped = recipe.describe(spec(init="random", intermediate={"enabled": False}), TrainingFacts([1, 3], "x"))
    assert skipped[0].endswith("init random.") and skipped[1] == "Stage 1 skipped."
