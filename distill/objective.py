"""Training objectives: combine the configured loss terms with their weights.

Every objective returns ``(total_loss, {term_name: unweighted_value})``; the trainer logs the dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from distill.losses import HIDDEN_LOSSES, LOGIT_LOSSES, hard_label_loss
from distill.mapping import hidden_state_pairs


@dataclass
class LabelObjective:
    """Hard labels only: cross-entropy (or MSE for regression). Used for teacher fine-tuning."""

    needs_teacher: bool = False
    needs_hidden_states: bool = False

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
    needs_teacher: bool = True
    hidden_pairs: list[tuple[int, int]] = field(init=False)

    def __post_init__(self) -> None:
        self.hidden_pairs = hidden_state_pairs(self.layer_map)

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
