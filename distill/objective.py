"""Training objectives: combine the configured loss terms with their weights.

Every objective returns ``(total_loss, {term_name: unweighted_value})``; the trainer logs the dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from distill.losses import HIDDEN_LOSSES, LOGIT_LOSSES, attention_mse, group_heads, hard_label_loss, hidden_mse
from distill.mapping import hidden_state_pairs


@dataclass
class LabelObjective:
    """Hard labels only: cross-entropy (or MSE for regression). Used for teacher fine-tuning."""

    needs_teacher = False
    needs_hidden_states = False
    needs_attentions = False

    def __call__(
        self,
        student: SequenceClassifierOutput,
        teacher: SequenceClassifierOutput | None,
        labels: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = hard_label_loss(student.logits, labels)
        return loss, {"ce": loss.detach()}


@dataclass
class DistilBertObjective:
    """``alpha_kd * KD(teacher_T, student_T) + alpha_ce * CE(labels) + alpha_cos * hidden-state cosine``.

    The cosine term averages over the embedding output and every mapped layer (``layer_map[k]`` is the
    teacher layer facing student layer ``k``). Terms whose weight is zero are not computed.
    """

    layer_map: list[int]
    temperature: float = 2.0
    kd_loss: str = "kl"
    alpha_kd: float = 0.5
    alpha_ce: float = 0.5
    alpha_cos: float = 1.0
    hidden_pairs: list[tuple[int, int]] = field(init=False)
    needs_attentions = False

    def __post_init__(self) -> None:
        self.hidden_pairs = hidden_state_pairs(self.layer_map)

    @property
    def needs_teacher(self) -> bool:
        return self.alpha_kd > 0 or self.alpha_cos > 0

    @property
    def needs_hidden_states(self) -> bool:
        return self.alpha_cos > 0

    def __call__(
        self,
        student: SequenceClassifierOutput,
        teacher: SequenceClassifierOutput | None,
        labels: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Args: model outputs for one batch, ``labels (batch,)``, ``attention_mask (batch, seq)``."""
        assert teacher is not None, "DistilBertObjective needs the teacher's outputs"
        regression = student.logits.shape[-1] == 1
        terms: dict[str, torch.Tensor] = {}
        total = student.logits.new_zeros(())
        if self.alpha_kd > 0:
            kd = LOGIT_LOSSES["mse" if regression else self.kd_loss]
            terms["kd"] = kd(student.logits, teacher.logits, self.temperature)
            total = total + self.alpha_kd * terms["kd"]
        if self.alpha_ce > 0:
            terms["ce"] = hard_label_loss(student.logits, labels)
            total = total + self.alpha_ce * terms["ce"]
        if self.alpha_cos > 0:
            assert student.hidden_states is not None and teacher.hidden_states is not None, "hidden states requested"
            cosine = HIDDEN_LOSSES["cosine"]
            per_layer = [
                cosine(student.hidden_states[s], teacher.hidden_states[t], attention_mask) for s, t in self.hidden_pairs
            ]
            terms["cos"] = torch.stack(per_layer).mean()
            total = total + self.alpha_cos * terms["cos"]
        return total, {name: value.detach() for name, value in terms.items()}


@dataclass
class IntermediateObjective:
    """TinyBERT stage 1: ``alpha_embedding * emb + alpha_hidden * mean_k hid_k + alpha_attention * mean_k att_k``.

    ``emb`` and ``hid_k`` are MSEs between the student's *projected* hidden states (see
    :class:`distill.tinybert.ProjectedStudent`) and the teacher's; ``att_k`` is the MSE between student layer
    ``k``'s attention maps and teacher layer ``layer_map[k]``'s, over heads and real (query, key) pairs; when
    the student has fewer heads, the teacher's are averaged in consecutive groups first. Per-layer values are
    returned as terms (``hid_1``, ``att_1``, ...) so they are logged.
    """

    layer_map: list[int]
    alpha_embedding: float = 1.0
    alpha_hidden: float = 1.0
    alpha_attention: float = 1.0
    student_heads: int | None = None
    needs_teacher = True
    hidden_pairs: list[tuple[int, int]] = field(init=False)

    def __post_init__(self) -> None:
        self.hidden_pairs = hidden_state_pairs(self.layer_map)

    @property
    def needs_hidden_states(self) -> bool:
        return self.alpha_embedding > 0 or self.alpha_hidden > 0

    @property
    def needs_attentions(self) -> bool:
        return self.alpha_attention > 0

    def __call__(
        self,
        student: SequenceClassifierOutput,
        teacher: SequenceClassifierOutput | None,
        labels: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert teacher is not None, "IntermediateObjective needs the teacher's outputs"
        terms: dict[str, torch.Tensor] = {}
        total = student.logits.new_zeros(())
        if self.needs_hidden_states:
            assert student.hidden_states is not None and teacher.hidden_states is not None, "hidden states requested"
            for s, t in self.hidden_pairs:
                name = "emb" if s == 0 else f"hid_{s}"
                terms[name] = hidden_mse(student.hidden_states[s], teacher.hidden_states[t], attention_mask)
            hidden = [terms[f"hid_{s}"] for s, _ in self.hidden_pairs[1:]]
            terms["hidden"] = torch.stack(hidden).mean()
            total = total + self.alpha_embedding * terms["emb"] + self.alpha_hidden * terms["hidden"]
        if self.needs_attentions:
            assert student.attentions is not None and teacher.attentions is not None, "attentions requested"
            for k, t in enumerate(self.layer_map):
                heads = self.student_heads or student.attentions[k].shape[1]
                target = group_heads(teacher.attentions[t], heads)
                terms[f"att_{k + 1}"] = attention_mse(student.attentions[k], target, attention_mask)
            terms["attention"] = torch.stack([terms[f"att_{k + 1}"] for k in range(len(self.layer_map))]).mean()
            total = total + self.alpha_attention * terms["attention"]
        return total, {name: value.detach() for name, value in terms.items()}
