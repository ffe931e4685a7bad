"""Unit tests for the distillation losses, against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses import (
    HIDDEN_LOSSES,
    LOGIT_LOSSES,
    hard_label_loss,
    hidden_cosine,
    hidden_mse,
    kl_divergence,
    logit_mse,
    soft_cross_entropy,
)

LN3 = math.log(3.0)

# Row 0: teacher softmax(T=2) = [1/4, 3/4], student [1/2, 1/2]. Row 1: identical logits (zero divergence).
STUDENT_LOGITS = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
TEACHER_LOGITS = torch.tensor([[0.0, 2 * LN3], [1.0, -1.0]])
TEMPERATURE = 2.0
KL_ROW0 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
# Row 1 cross-entropy: teacher = student = softmax([0.5, -0.5]) -> entropy of that distribution
P1 = 1 / (1 + math.exp(-1.0))
ENTROPY_ROW1 = -(P1 * math.log(P1) + (1 - P1) * math.log(1 - P1))

EXPECTED_LOGIT_LOSSES = {
    # KL(teacher_T || student_T) x T^2, averaged over the batch of 2
    "kl": TEMPERATURE**2 * (KL_ROW0 + 0.0) / 2,
    # -sum p_teacher log p_student x T^2: row 0 is -(1/4 ln 1/2 + 3/4 ln 1/2) = ln 2
    "soft_ce": TEMPERATURE**2 * (math.log(2.0) + ENTROPY_ROW1) / 2,
    # raw logits, temperature ignored: only row 0's second entry differs, by 2 ln 3, over 4 entries
    "mse": (2 * LN3) ** 2 / 4,
}

# One sequence of three tokens, the last one padding. Student/teacher per real token:
# token 0 parallel (cos 1), token 1 orthogonal (cos 0).
STUDENT_HIDDEN = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
TEACHER_HIDDEN = torch.tensor([[[3.0, 0.0], [1.0, 0.0], [-9.0, 2.0]]])
MASK = torch.tensor([[1, 1, 0]])

EXPECTED_HIDDEN_LOSSES = {
    # mean over the two real tokens of 1 - cos: (0 + 1) / 2
    "cosine": 0.5,
    # per token, mean over units of (s - t)^2: token 0 (4 + 0) / 2 = 2, token 1 (1 + 1) / 2 = 1 -> mean 1.5
    "mse": 1.5,
}


def test_every_logit_loss_has_a_hand_computed_test():
    assert set(EXPECTED_LOGIT_LOSSES) == set(LOGIT_LOSSES)


def test_every_hidden_loss_has_a_hand_computed_test():
    assert set(EXPECTED_HIDDEN_LOSSES) == set(HIDDEN_LOSSES)


def test_registries_name_the_public_functions():
    assert LOGIT_LOSSES == {"kl": kl_divergence, "soft_ce": soft_cross_entropy, "mse": logit_mse}
    assert HIDDEN_LOSSES == {"cosine": hidden_cosine, "mse": hidden_mse}


# --- logit losses --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LOGIT_LOSSES))
def test_logit_loss_matches_hand_computation(name):
    value = LOGIT_LOSSES[name](STUDENT_LOGITS, TEACHER_LOGITS, TEMPERATURE)
    assert value.shape == ()
    assert value.item() == pytest.approx(EXPECTED_LOGIT_LOSSES[name], rel=1e-5)


@pytest.mark.parametrize("name", sorted(LOGIT_LOSSES))
def test_logit_loss_gradient_reaches_the_student_only(name):
    student = STUDENT_LOGITS.clone().requires_grad_(True)
    teacher = TEACHER_LOGITS.clone().requires_grad_(True)
    LOGIT_LOSSES[name](student, teacher, TEMPERATURE).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


@pytest.mark.parametrize("name", ["kl", "mse"])
def test_logit_loss_is_zero_when_student_equals_teacher(name):
    logits = torch.tensor([[0.3, -1.2, 2.0], [4.0, 0.0, -4.0]])
    assert LOGIT_LOSSES[name](logits, logits.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_scales_with_temperature_squared():
    # Logits proportional to T give the same softened distributions at every T, so the loss grows as T^2.
    for temperature in (1.0, 2.0, 4.0):
        value = kl_divergence(torch.zeros(1, 2), torch.tensor([[0.0, LN3 * temperature]]), temperature)
        assert value.item() == pytest.approx(temperature**2 * KL_ROW0, rel=1e-5)


def test_kl_is_teacher_to_student_direction():
    student, teacher = torch.tensor([[0.0, LN3]]), torch.tensor([[0.0, 0.0]])
    # KL(teacher=[1/2,1/2] || student=[1/4,3/4])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_divergence(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(KL_ROW0)


def test_soft_cross_entropy_is_kl_plus_teacher_entropy():
    student = torch.tensor([[0.5, -0.2, 1.0], [2.0, 0.1, -1.0]])
    teacher = torch.tensor([[1.0, 0.0, -1.0], [0.3, 0.3, 0.9]])
    temperature = 1.5
    teacher_probs = F.softmax(teacher / temperature, dim=-1)
    entropy = -(teacher_probs * teacher_probs.log()).sum(-1).mean() * temperature**2
    assert soft_cross_entropy(student, teacher, temperature).item() == pytest.approx(
        (kl_divergence(student, teacher, temperature) + entropy).item(), rel=1e-5
    )


def test_logit_mse_ignores_temperature():
    assert (
        logit_mse(STUDENT_LOGITS, TEACHER_LOGITS, 1.0).item() == logit_mse(STUDENT_LOGITS, TEACHER_LOGITS, 10.0).item()
    )


# --- hard labels ---------------------------------------------------------------------------------------------------


def test_hard_label_loss_is_cross_entropy_for_classes():
    logits = torch.tensor([[0.0, LN3], [0.0, LN3]])
    labels = torch.tensor([1, 0])
    # -ln(3/4) and -ln(1/4), averaged
    expected = (-math.log(0.75) - math.log(0.25)) / 2
    assert hard_label_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_hard_label_loss_is_mse_for_one_output():
    logits = torch.tensor([[1.0], [2.0], [0.0]])
    labels = torch.tensor([1.5, 2.0, -1.0])
    assert hard_label_loss(logits, labels).item() == pytest.approx((0.25 + 0.0 + 1.0) / 3)


def test_hard_label_loss_accepts_float_class_ids():
    logits = torch.tensor([[0.0, LN3]])
    assert hard_label_loss(logits, torch.tensor([1.0])).item() == pytest.approx(-math.log(0.75), rel=1e-6)


# --- hidden-state losses -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(HIDDEN_LOSSES))
def test_hidden_loss_matches_hand_computation(name):
    value = HIDDEN_LOSSES[name](STUDENT_HIDDEN, TEACHER_HIDDEN, MASK)
    assert value.shape == ()
    assert value.item() == pytest.approx(EXPECTED_HIDDEN_LOSSES[name], rel=1e-6)


@pytest.mark.parametrize("name", sorted(HIDDEN_LOSSES))
def test_hidden_loss_ignores_padded_positions(name):
    before = HIDDEN_LOSSES[name](STUDENT_HIDDEN, TEACHER_HIDDEN, MASK)
    student, teacher = STUDENT_HIDDEN.clone(), TEACHER_HIDDEN.clone()
    student[0, 2] = torch.tensor([-100.0, 7.0])
    teacher[0, 2] = torch.tensor([0.5, 300.0])
    after = HIDDEN_LOSSES[name](student, teacher, MASK)
    assert after.item() == pytest.approx(before.item(), rel=1e-7)


@pytest.mark.parametrize("name", sorted(HIDDEN_LOSSES))
def test_hidden_loss_is_zero_when_student_equals_teacher(name):
    hidden = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert HIDDEN_LOSSES[name](hidden, hidden.clone(), mask).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", sorted(HIDDEN_LOSSES))
def test_hidden_loss_gradient_reaches_the_student_only(name):
    student = STUDENT_HIDDEN.clone().requires_grad_(True)
    teacher = TEACHER_HIDDEN.clone().requires_grad_(True)
    HIDDEN_LOSSES[name](student, teacher, MASK).backward()
    assert student.grad is not None and student.grad[0, :2].abs().sum() > 0
    assert torch.equal(student.grad[0, 2], torch.zeros(2)), "padding gets no gradient"
    assert teacher.grad is None


def test_hidden_cosine_parallel_orthogonal_antiparallel():
    student = torch.tensor([[[1.0, 2.0], [1.0, 0.0], [1.0, 1.0]]])
    teacher = torch.tensor([[[2.0, 4.0], [0.0, 3.0], [-2.0, -2.0]]])
    ones = torch.ones(1, 3)
    assert hidden_cosine(student[:, :1], teacher[:, :1], ones[:, :1]).item() == pytest.approx(0.0, abs=1e-6)
    assert hidden_cosine(student[:, 1:2], teacher[:, 1:2], ones[:, :1]).item() == pytest.approx(1.0)
    assert hidden_cosine(student[:, 2:], teacher[:, 2:], ones[:, :1]).item() == pytest.approx(2.0)
    assert hidden_cosine(student, teacher, ones).item() == pytest.approx(1.0)


def test_hidden_losses_average_over_real_tokens_of_the_whole_batch():
    # Sequence 0: one real token with 1 - cos = 1. Sequence 1: three real tokens with 1 - cos = 0.
    student = torch.tensor([[[1.0, 0.0], [9.0, 9.0], [9.0, 9.0]], [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    teacher = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    assert hidden_cosine(student, teacher, mask).item() == pytest.approx(0.25)
    # MSE: sequence 0's real token differs by (1, -1) -> 1 per unit; the rest 0 -> 1 / 4 tokens
    assert hidden_mse(student, teacher, mask).item() == pytest.approx(0.25)


def test_hidden_losses_accept_boolean_and_float_masks():
    for mask in (MASK.bool(), MASK.float()):
        assert hidden_cosine(STUDENT_HIDDEN, TEACHER_HIDDEN, mask).item() == pytest.approx(0.5)
        assert hidden_mse(STUDENT_HIDDEN, TEACHER_HIDDEN, mask).item() == pytest.approx(1.5)
