"""Training objectives: combine the configured loss terms with their weights.

Every objective returns ``(total_loss, {term_name: unweighted_value})``; the trainer logs the dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from transformers.modeling_outputs import SequenceClassifierOutput

from distill.losses import HIDDEN_LOSSES, LOGIT_LOSSES, attention_mse, group_heads, hard_label_loss, hidden_mse
from distill.mapping import hidden_state_pairs

Outputs = SequenceClassifierOutput
Terms = dict[str, torch.Tensor]

if TYPE_CHECKING:
    from distill.config import DistilBertStudentConfig, IntermediateStageConfig, PredictionStageConfig


def logits_only(objective: Any) -> bool:
    """Whether ``objective`` needs the teacher's logits and nothing else from it (so they can be cached)."""
    return bool(objective.needs_teacher and not objective.needs_hidden_states and not objective.needs_attentions)


class Objective:
    """Base of every objective: ``objective(student, teacher, labels, attention_mask)`` returns the weighted total
    and each unweighted term (detached) by name; a subclass says which teacher outputs it needs and adds its terms."""

    needs_teacher = False
    needs_hidden_states = False
    needs_attentions = False

    def __call__(
        self,
        student: SequenceClassifierOutput,
        teacher: SequenceClassifierOutput | None,
        labels: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, Terms]:
        """Args: model outputs for one batch (``teacher`` None when no teacher is needed), ``labels (batch,)``,
        ``attention_mask (batch, seq)``."""
        assert teacher is not None or not self.needs_teacher, f"{type(self).__name__} needs the teacher's outputs"
        terms: Terms = {}
        total = self.add_terms(terms, student, teacher, labels, attention_mask)
        return total, {name: value.detach() for name, value in terms.items()}

    def add_terms(self, terms: Terms, student: Outputs, teacher: Any, labels: Tensor, mask: Tensor) -> Tensor:
        """Put every unweighted term in ``terms``; return their weighted sum."""
        raise NotImplementedError


@dataclass
class LabelObjective(Objective):
    """Hard labels only: cross-entropy (or MSE for regression). Used for teacher fine-tuning and label-only twins."""

    def add_terms(self, terms: Terms, student: Outputs, teacher: Any, labels: Tensor, mask: Tensor) -> Tensor:
        terms["ce"] = hard_label_loss(student.logits, labels)
        return terms["ce"]


@dataclass
class MappedObjective(Objective):
    """An objective that compares student layer ``k`` with teacher layer ``layer_map[k]``."""

    layer_map: list[int]
    hidden_pairs: list[tuple[int, int]] = field(init=False)

    def __post_init__(self) -> None:
        self.hidden_pairs = hidden_state_pairs(self.layer_map)


@dataclass
class DistilBertObjective(MappedObjective):
    """``alpha_kd * KD(teacher_T, student_T) + alpha_ce * CE(labels) + alpha_cos * hidden + alpha_attention * att``.

    The hidden-state term (``hidden_loss``: cosine or MSE) averages over the embedding output and every mapped layer
    (``layer_map[k]`` is the teacher layer facing student layer ``k``); the attention term is the MSE between mapped
    layers' attention probabilities (same head count: the student has the teacher's width). Terms whose weight is
    zero are not computed.
    """

    temperature: float = 2.0
    kd_loss: str = "kl"
    alpha_kd: float = 0.5
    alpha_ce: float = 0.5
    alpha_cos: float = 1.0
    hidden_loss: str = "cosine"
    alpha_attention: float = 0.0

    @classmethod
    def from_spec(cls, spec: DistilBertStudentConfig, layer_map: list[int]) -> DistilBertObjective:
        """A DistilBERT-style student's loss: its temperature, logit term and weights (``alpha_cos`` chosen)."""
        assert spec.alpha_cos is not None, "alpha_cos is chosen by distill.budget before training"
        return cls(
            layer_map, spec.temperature, spec.kd_loss, spec.alpha_kd, spec.alpha_ce, spec.alpha_cos,
            spec.hidden_loss, spec.alpha_attention,
        )  # fmt: skip

    @classmethod
    def from_stage(cls, stage: PredictionStageConfig, layer_map: list[int]) -> DistilBertObjective:
        """TinyBERT stage 2 (prediction layer): logit distillation plus optional cross-entropy, no hidden states."""
        return cls(layer_map, stage.temperature, stage.kd_loss, stage.alpha_kd, stage.alpha_ce, alpha_cos=0.0)

    @property
    def needs_teacher(self) -> bool:
        """Only the logit, hidden-state and attention terms read the teacher (cross-entropy alone needs none)."""
        return self.alpha_kd > 0 or self.alpha_cos > 0 or self.alpha_attention > 0

    @property
    def needs_hidden_states(self) -> bool:
        """Only the hidden-state term compares hidden states; without it (and attention), cached logits suffice."""
        return self.alpha_cos > 0

    @property
    def needs_attentions(self) -> bool:
        return self.alpha_attention > 0

    def add_terms(self, terms: Terms, student: Outputs, teacher: Any, labels: Tensor, mask: Tensor) -> Tensor:
        regression = student.logits.shape[-1] == 1
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
            compare = HIDDEN_LOSSES[self.hidden_loss]
            per_layer = [
                compare(student.hidden_states[s], teacher.hidden_states[t], mask) for s, t in self.hidden_pairs
            ]
            terms["cos"] = torch.stack(per_layer).mean()
            total = total + self.alpha_cos * terms["cos"]
        if self.alpha_attention > 0:
            assert student.attentions is not None and teacher.attentions is not None, "attentions requested"
            per_layer = [attention_mse(student.attentions[k], teacher.attentions[t], mask)
                         for k, t in enumerate(self.layer_map)]  # fmt: skip
            terms["att"] = torch.stack(per_layer).mean()
            total = total + self.alpha_attention * terms["att"]
        return total


@dataclass
class IntermediateObjective(MappedObjective):
    """TinyBERT stage 1: ``alpha_embedding * emb + alpha_hidden * mean_k hid_k + alpha_attention * mean_k att_k``.

    ``emb`` and ``hid_k`` are MSEs between the student's *projected* hidden states (see
    :class:`distill.students.attention.ProjectedStudent`) and the teacher's; ``att_k`` is the MSE between student
    layer ``k``'s attention maps and teacher layer ``layer_map[k]``'s, over heads and real (query, key) pairs; when
    the student has fewer heads, the teacher's are averaged in consecutive groups first. Per-layer values are
    returned as terms (``hid_1``, ``att_1``, ...) so they are logged.
    """

    alpha_embedding: float = 1.0
    alpha_hidden: float = 1.0
    alpha_attention: float = 1.0
    student_heads: int | None = None
    needs_teacher = True

    @property
    def needs_hidden_states(self) -> bool:
        return max(self.alpha_embedding, self.alpha_hidden) > 0

    @property
    def needs_attentions(self) -> bool:
        return self.alpha_attention > 0

    @classmethod
    def from_stage(cls, stage: IntermediateStageConfig, layer_map: list[int], heads: int) -> IntermediateObjective:
        """TinyBERT stage 1 (intermediate layers) for a student with ``heads`` attention heads."""
        return cls(layer_map, stage.alpha_embedding, stage.alpha_hidden, stage.alpha_attention, student_heads=heads)

    def add_terms(self, terms: Terms, student: Outputs, teacher: Any, labels: Tensor, mask: Tensor) -> Tensor:
        total = student.logits.new_zeros(())
        if self.needs_hidden_states:
            assert student.hidden_states is not None and teacher.hidden_states is not None, "hidden states requested"
            for s, t in self.hidden_pairs:
                name = "emb" if s == 0 else f"hid_{s}"
                terms[name] = hidden_mse(student.hidden_states[s], teacher.hidden_states[t], mask)
            hidden = [terms[f"hid_{s}"] for s, _ in self.hidden_pairs[1:]]
            terms["hidden"] = torch.stack(hidden).mean()
            total = total + self.alpha_embedding * terms["emb"] + self.alpha_hidden * terms["hidden"]
        if self.needs_attentions:
            assert student.attentions is not None and teacher.attentions is not None, "attentions requested"
            for k, t in enumerate(self.layer_map):
                heads = self.student_heads or student.attentions[k].shape[1]
                target = group_heads(teacher.attentions[t], heads)
                terms[f"att_{k + 1}"] = attention_mse(student.attentions[k], target, mask)
            terms["attention"] = torch.stack([terms[f"att_{k + 1}"] for k in range(len(self.layer_map))]).mean()
            total = total + self.alpha_attention * terms["attention"]
        return total
