"""TinyBERT stage 1's model pieces: attention that exposes pre-softmax scores, and the student wrapped with the
learned projections from its width to the teacher's.

Importing this module registers :data:`SCORES_ATTENTION` with ``transformers``, so any model can switch to it with
``model.set_attn_implementation(SCORES_ATTENTION)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.modeling_outputs import SequenceClassifierOutput

PROJECTIONS_FILE = "projections.safetensors"

SCORES_ATTENTION = "distill_scores"
"""Attention implementation that returns pre-softmax scores (before the padding mask) as attention maps."""


def scores_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention whose second output is the scaled scores ``QK^T / sqrt(d)`` instead of probabilities."""
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    masked = scores if attention_mask is None else scores + attention_mask
    probs = nn.functional.dropout(masked.softmax(dim=-1), p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), scores


AttentionInterface.register(SCORES_ATTENTION, scores_attention)
AttentionMaskInterface.register(SCORES_ATTENTION, eager_mask)


class ProjectedStudent(nn.Module):
    """The student plus learned linear maps from its width to the teacher's (stage 1 only).

    Its outputs carry the *projected* hidden states: index 0 (embedding output) through ``embedding_projection``,
    every layer output through ``hidden_projection`` (one map shared by all layers, as in TinyBERT).
    """

    def __init__(self, student: PreTrainedModel, teacher_width: int) -> None:
        super().__init__()
        self.student = student
        width = student.config.hidden_size
        self.embedding_projection = nn.Linear(width, teacher_width)
        self.hidden_projection = nn.Linear(width, teacher_width)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> SequenceClassifierOutput:
        del labels  # the objective reads them
        out = self.student(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        hidden = None
        if out.hidden_states is not None:
            first, *rest = out.hidden_states
            hidden = (self.embedding_projection(first), *(self.hidden_projection(h) for h in rest))
        return SequenceClassifierOutput(logits=out.logits, hidden_states=hidden, attentions=out.attentions)

    def projection_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous() for k, v in self.state_dict().items() if not k.startswith("student.")}

    def save_pretrained(self, path: Path | str) -> None:
        """The student as a plain HF model, and the projections beside it in ``projections.safetensors``."""
        path = Path(path)
        self.student.save_pretrained(path)
        save_file(self.projection_state(), str(path / PROJECTIONS_FILE))
