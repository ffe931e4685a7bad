"""Unit tests for the training objectives: weighted sums of the loss terms, and the terms they report."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.modeling_outputs import SequenceClassifierOutput

from distill.losses import hidden_cosine, kl_divergence, logit_mse, soft_cross_entropy
from distill.objective import DistilBertObjective, LabelObjective

BATCH, SEQ, HIDDEN, TEACHER_LAYERS = 4, 5, 8, 4
LAYER_MAP = [1, 3]


def make_outputs(num_labels: int = 3, seed: int = 0, requires_grad: bool = False):
    """Random student (2 layers) and teacher (4 layers) outputs with hidden states, labels and a padded mask."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    student_hidden = tuple(randn(BATCH, SEQ, HIDDEN).requires_grad_(requires_grad) for _ in range(len(LAYER_MAP) + 1))
    teacher_hidden = tuple(randn(BATCH, SEQ, HIDDEN) for _ in range(TEACHER_LAYERS + 1))
    student = SequenceClassifierOutput(
        logits=randn(BATCH, num_labels).requires_grad_(requires_grad), hidden_states=student_hidden
    )
    teacher = SequenceClassifierOutput(logits=randn(BATCH, num_labels), hidden_states=teacher_hidden)
    if num_labels == 1:
        labels = randn(BATCH)
    else:
        labels = torch.randint(0, num_labels, (BATCH,), generator=generator)
    attention_mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    attention_mask[0, 3:] = 0
    attention_mask[2, 4:] = 0
    return student, teacher, labels, attention_mask


def expected_cosine(student, teacher, attention_mask) -> torch.Tensor:
    """Embedding output plus every mapped layer, averaged: pairs (0,0), (1,2), (2,4)."""
    pairs = [(0, 0), (1, 2), (2, 4)]
    return torch.stack(
        [hidden_cosine(student.hidden_states[s], teacher.hidden_states[t], attention_mask) for s, t in pairs]
    ).mean()


def test_label_objective_is_cross_entropy():
    student, _, labels, mask = make_outputs()
    total, terms = LabelObjective()(student, None, labels, mask)
    assert total.item() == pytest.approx(F.cross_entropy(student.logits, labels).item(), rel=1e-6)
    assert set(terms) == {"ce"} and terms["ce"].item() == pytest.approx(total.item())
    assert not LabelObjective().needs_teacher and not LabelObjective().needs_hidden_states


def test_label_objective_is_mse_for_regression():
    student, _, labels, mask = make_outputs(num_labels=1)
    total, _ = LabelObjective()(student, None, labels, mask)
    assert total.item() == pytest.approx(F.mse_loss(student.logits[:, 0], labels).item(), rel=1e-6)


@pytest.mark.parametrize(
    "kd_loss, function", [("kl", kl_divergence), ("soft_ce", soft_cross_entropy), ("mse", logit_mse)]
)
def test_only_kd_equals_the_logit_loss(kd_loss, function):
    student, teacher, labels, mask = make_outputs()
    objective = DistilBertObjective(
        layer_map=LAYER_MAP, temperature=3.0, kd_loss=kd_loss, alpha_kd=1.0, alpha_ce=0.0, alpha_cos=0.0
    )
    total, terms = objective(student, teacher, labels, mask)
    expected = function(student.logits, teacher.logits, 3.0)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(terms) == {"kd"}
    assert not objective.needs_hidden_states


def test_only_kd_kl_by_hand():
    teacher_logits = torch.tensor([[0.0, 2 * torch.log(torch.tensor(3.0)).item()]])
    student = SequenceClassifierOutput(logits=torch.zeros(1, 2))
    teacher = SequenceClassifierOutput(logits=teacher_logits)
    objective = DistilBertObjective(layer_map=[0], temperature=2.0, alpha_kd=1.0, alpha_ce=0.0, alpha_cos=0.0)
    total, _ = objective(student, teacher, torch.tensor([1]), torch.ones(1, 3))
    # softened teacher [1/4, 3/4] vs student [1/2, 1/2], times T^2 = 4
    expected = 4 * (0.25 * torch.log(torch.tensor(0.5)) + 0.75 * torch.log(torch.tensor(1.5)))
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)


def test_total_is_the_weighted_sum_of_the_returned_terms():
    student, teacher, labels, mask = make_outputs()
    objective = DistilBertObjective(layer_map=LAYER_MAP, temperature=2.0, alpha_kd=0.7, alpha_ce=0.2, alpha_cos=1.5)
    total, terms = objective(student, teacher, labels, mask)
    assert set(terms) == {"kd", "ce", "cos"}
    assert total.item() == pytest.approx((0.7 * terms["kd"] + 0.2 * terms["ce"] + 1.5 * terms["cos"]).item(), rel=1e-6)
    assert terms["kd"].item() == pytest.approx(kl_divergence(student.logits, teacher.logits, 2.0).item(), rel=1e-6)
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(student.logits, labels).item(), rel=1e-6)
    assert terms["cos"].item() == pytest.approx(expected_cosine(student, teacher, mask).item(), rel=1e-6)


def test_returned_terms_are_unweighted_and_detached():
    student, teacher, labels, mask = make_outputs(requires_grad=True)
    objective = DistilBertObjective(layer_map=LAYER_MAP, alpha_kd=3.0, alpha_ce=5.0, alpha_cos=7.0)
    total, terms = objective(student, teacher, labels, mask)
    assert total.requires_grad
    assert all(not value.requires_grad for value in terms.values())
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(student.logits, labels).item(), rel=1e-6)


@pytest.mark.parametrize(
    "weights, present",
    [
        ({"alpha_kd": 0.0, "alpha_ce": 1.0, "alpha_cos": 1.0}, {"ce", "cos"}),
        ({"alpha_kd": 1.0, "alpha_ce": 0.0, "alpha_cos": 1.0}, {"kd", "cos"}),
        ({"alpha_kd": 1.0, "alpha_ce": 1.0, "alpha_cos": 0.0}, {"kd", "ce"}),
        ({"alpha_kd": 0.0, "alpha_ce": 1.0, "alpha_cos": 0.0}, {"ce"}),
    ],
)
def test_zero_weight_terms_are_absent(weights, present):
    student, teacher, labels, mask = make_outputs()
    objective = DistilBertObjective(layer_map=LAYER_MAP, **weights)
    total, terms = objective(student, teacher, labels, mask)
    assert set(terms) == present
    expected = sum(weights[f"alpha_{name}"] * value for name, value in terms.items())
    assert total.item() == pytest.approx(float(expected), rel=1e-6)
    assert objective.needs_hidden_states == ("cos" in present)


def test_zero_weight_cosine_does_not_need_hidden_states():
    student, teacher, labels, mask = make_outputs()
    student = SequenceClassifierOutput(logits=student.logits)
    teacher = SequenceClassifierOutput(logits=teacher.logits)
    objective = DistilBertObjective(layer_map=LAYER_MAP, alpha_kd=0.5, alpha_ce=0.5, alpha_cos=0.0)
    total, terms = objective(student, teacher, labels, mask)
    assert set(terms) == {"kd", "ce"} and torch.isfinite(total)


def test_hidden_pairs_follow_the_layer_map():
    assert DistilBertObjective(layer_map=[1, 3]).hidden_pairs == [(0, 0), (1, 2), (2, 4)]
    assert DistilBertObjective(layer_map=[0, 2, 5]).hidden_pairs == [(0, 0), (1, 1), (2, 3), (3, 6)]
    assert DistilBertObjective(layer_map=[0]).needs_teacher


def test_regression_uses_logit_mse_whatever_kd_loss_says():
    student, teacher, labels, mask = make_outputs(num_labels=1)
    objective = DistilBertObjective(layer_map=LAYER_MAP, kd_loss="kl", alpha_kd=1.0, alpha_ce=1.0, alpha_cos=0.0)
    total, terms = objective(student, teacher, labels, mask)
    assert terms["kd"].item() == pytest.approx(F.mse_loss(student.logits, teacher.logits).item(), rel=1e-6)
    assert terms["ce"].item() == pytest.approx(F.mse_loss(student.logits[:, 0], labels).item(), rel=1e-6)
    assert total.item() == pytest.approx((terms["kd"] + terms["ce"]).item(), rel=1e-6)


def test_gradients_reach_the_student_only():
    student, teacher, labels, mask = make_outputs(requires_grad=True)
    teacher = SequenceClassifierOutput(
        logits=teacher.logits.clone().requires_grad_(True),
        hidden_states=tuple(h.clone().requires_grad_(True) for h in teacher.hidden_states),
    )
    total, _ = DistilBertObjective(layer_map=LAYER_MAP)(student, teacher, labels, mask)
    total.backward()
    assert student.logits.grad is not None and student.logits.grad.abs().sum() > 0
    assert all(h.grad is not None and h.grad.abs().sum() > 0 for h in student.hidden_states)
    assert teacher.logits.grad is None
    assert all(h.grad is None for h in teacher.hidden_states)


def test_student_equal_to_teacher_has_zero_kd_and_cos(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    from distill.students.truncate import build_distilbert_student

    teacher_model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).eval()
    layer_map = list(range(teacher_model.config.num_hidden_layers))
    student_model = build_distilbert_student(teacher_model, layer_map).eval()
    input_ids = torch.randint(0, teacher_model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(input_ids)
    with torch.no_grad():
        student = student_model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
        teacher = teacher_model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
    _, terms = DistilBertObjective(layer_map=layer_map)(student, teacher, torch.tensor([0, 1]), mask)
    assert terms["kd"].item() == pytest.approx(0.0, abs=1e-5)
    assert terms["cos"].item() == pytest.approx(0.0, abs=1e-5)
    assert terms["ce"].item() > 0


def test_objectives_are_built_from_their_config_sections():
    from distill.config import DistilBertStudentConfig, IntermediateStageConfig, PredictionStageConfig
    from distill.objective import IntermediateObjective

    spec = DistilBertStudentConfig(name="s", temperature=3.0, kd_loss="mse", alpha_kd=0.1, alpha_ce=0.2, alpha_cos=0.3)
    assert DistilBertObjective.from_spec(spec, [1, 3]) == DistilBertObjective(
        layer_map=[1, 3], temperature=3.0, kd_loss="mse", alpha_kd=0.1, alpha_ce=0.2, alpha_cos=0.3
    )
    stage2 = PredictionStageConfig(temperature=4.0, kd_loss="soft_ce", alpha_kd=0.6, alpha_ce=0.4)
    assert DistilBertObjective.from_stage(stage2, [0]) == DistilBertObjective(
        layer_map=[0], temperature=4.0, kd_loss="soft_ce", alpha_kd=0.6, alpha_ce=0.4, alpha_cos=0.0
    )
    stage1 = IntermediateStageConfig(alpha_embedding=0.5, alpha_hidden=2.0, alpha_attention=0.0)
    assert IntermediateObjective.from_stage(stage1, [1, 3], heads=2) == IntermediateObjective(
        layer_map=[1, 3], alpha_embedding=0.5, alpha_hidden=2.0, alpha_attention=0.0, student_heads=2
    )


def test_labels_only_distilbert_objective_trains_without_a_teacher():
    student, _, labels, mask = make_outputs()
    objective = DistilBertObjective(layer_map=LAYER_MAP, alpha_kd=0.0, alpha_ce=1.0, alpha_cos=0.0)
    assert not objective.needs_teacher
    total, terms = objective(student, None, labels, mask)
    assert set(terms) == {"ce"} and total.item() == pytest.approx(terms["ce"].item())


def test_hidden_mse_and_attention_terms_are_chosen_by_name():
    from distill.losses import attention_mse, hidden_mse

    student, teacher, labels, mask = make_outputs()
    generator = torch.Generator().manual_seed(5)
    maps = [torch.rand(BATCH, 2, SEQ, SEQ, generator=generator) for _ in range(TEACHER_LAYERS + len(LAYER_MAP))]
    student = SequenceClassifierOutput(
        logits=student.logits, hidden_states=student.hidden_states, attentions=tuple(maps[: len(LAYER_MAP)])
    )
    teacher = SequenceClassifierOutput(
        logits=teacher.logits, hidden_states=teacher.hidden_states, attentions=tuple(maps[len(LAYER_MAP) :])
    )
    objective = DistilBertObjective(
        layer_map=LAYER_MAP, alpha_kd=0.0, alpha_ce=0.0, alpha_cos=1.0, hidden_loss="mse", alpha_attention=2.0
    )
    assert objective.needs_attentions and objective.needs_hidden_states
    total, terms = objective(student, teacher, labels, mask)
    hidden = torch.stack([hidden_mse(student.hidden_states[s], teacher.hidden_states[t], mask)
                          for s, t in objective.hidden_pairs]).mean()  # fmt: skip
    attention = torch.stack([attention_mse(student.attentions[k], teacher.attentions[t], mask)
                             for k, t in enumerate(LAYER_MAP)]).mean()  # fmt: skip
    assert terms["cos"].item() == pytest.approx(hidden.item(), rel=1e-6)
    assert terms["att"].item() == pytest.approx(attention.item(), rel=1e-6)
    assert total.item() == pytest.approx(hidden.item() + 2.0 * attention.item(), rel=1e-6)
    assert not DistilBertObjective(layer_map=LAYER_MAP).needs_attentions  # off by default
