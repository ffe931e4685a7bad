"""Distillation losses as pure functions over tensors; ``LOSSES`` selects them by name.

Convention: logit KD is KL(teacher_T || student_T) x T^2 (Hinton et al.), averaged over the batch, so its
gradient scale does not shrink as the temperature grows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) x T^2.

    Args:
        student_logits: ``(batch, num_labels)``.
        teacher_logits: ``(batch, num_labels)``; no gradient flows into it.
        temperature: softening temperature ``T > 0``.
    Returns:
        Scalar: the batch mean of the per-example KL, times ``T**2``.
    """
    student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    return F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True) * temperature**2


def soft_cross_entropy(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Cross-entropy of the student's softened distribution against the teacher's, times ``T**2``.

    Equals :func:`kl_divergence` plus the teacher's entropy (a constant for the student). Shapes as there.
    """
    teacher_probs = F.softmax(teacher_logits.detach() / temperature, dim=-1)
    student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
    return -(teacher_probs * student_log_probs).sum(dim=-1).mean() * temperature**2


def logit_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean squared error between raw logits ``(batch, num_labels)``; ``temperature`` is accepted and ignored."""
    del temperature
    return F.mse_loss(student_logits, teacher_logits.detach())


NO_LABEL = -100
"""The label of a row that has no hard label (an augmented copy): class id ``-100``, or NaN for a regression score.
The hard-label term skips such rows; only the teacher's outputs teach the student on them."""


def hard_label_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on class ids for ``(batch, num_labels > 1)`` logits; MSE on scores for ``(batch, 1)`` logits;
    averaged over the rows that have a label (zero, with a gradient, when none has).

    Args:
        logits: ``(batch, num_labels)``.
        labels: ``(batch,)`` class ids (long) or regression targets (float); :data:`NO_LABEL` or NaN: no label.
    """
    if logits.shape[-1] == 1:
        scores = labels.float()
        keep = ~torch.isnan(scores)
        if not keep.any():
            return logits.sum() * 0.0
        return F.mse_loss(logits.squeeze(-1)[keep], scores[keep])
    labels = labels.long()
    if not (labels != NO_LABEL).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=NO_LABEL)


def _masked_token_mean(per_token: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def hidden_cosine(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Mean over real tokens of ``1 - cos(student, teacher)``, as in DistilBERT.

    Args:
        student_hidden: ``(batch, seq, hidden)``.
        teacher_hidden: ``(batch, seq, hidden)``, same width (project first when widths differ).
        attention_mask: ``(batch, seq)``, 1 for real tokens, 0 for padding (excluded).
    """
    per_token = 1.0 - F.cosine_similarity(student_hidden, teacher_hidden.detach(), dim=-1)  # (batch, seq)
    return _masked_token_mean(per_token, attention_mask)


def hidden_mse(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Mean squared error per hidden unit over real tokens. Shapes as in :func:`hidden_cosine`."""
    per_token = (student_hidden - teacher_hidden.detach()).pow(2).mean(dim=-1)  # (batch, seq)
    return _masked_token_mean(per_token, attention_mask)


def group_heads(attention: torch.Tensor, heads: int) -> torch.Tensor:
    """Average ``(batch, H, q, k)`` attention over ``H // heads`` consecutive heads, giving ``heads`` heads.

    The rule for a teacher with more heads than its student: teacher heads ``[g * r, (g + 1) * r)`` face student
    head ``g`` (``r = H / heads``). Raises ``ValueError`` when ``heads`` does not divide ``H``.
    """
    total = attention.shape[1]
    if total == heads:
        return attention
    if heads > total or total % heads:
        raise ValueError(f"cannot map {total} teacher attention heads onto {heads} student heads")
    batch, _, queries, keys = attention.shape
    return attention.reshape(batch, heads, total // heads, queries, keys).mean(dim=2)


def attention_mse(
    student_attention: torch.Tensor, teacher_attention: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Mean squared error between attention maps over heads and real (query, key) pairs, as in TinyBERT.

    Args:
        student_attention: ``(batch, heads, seq, seq)`` pre-softmax scores or probabilities.
        teacher_attention: the same shape (group the teacher's heads first with :func:`group_heads`).
        attention_mask: ``(batch, seq)``; pairs where the query or the key is padding are excluded.
    """
    mask = attention_mask.to(student_attention.dtype)
    pairs = (mask[:, :, None] * mask[:, None, :])[:, None]  # (batch, 1, seq, seq)
    squared = (student_attention - teacher_attention.detach()).pow(2) * pairs
    return squared.sum() / (pairs.sum() * student_attention.shape[1]).clamp(min=1.0)


LOGIT_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "kl": kl_divergence,
    "soft_ce": soft_cross_entropy,
    "mse": logit_mse,
}
"""Logit distillation terms, selected by the student config's ``kd_loss``."""

HIDDEN_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cosine": hidden_cosine,
    "mse": hidden_mse,
}
"""Hidden-state terms over mapped layers."""
