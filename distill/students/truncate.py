"""Weight surgery: students whose weights are cut out of the teacher's.

DistilBERT-style students keep the teacher's width and copy whole layers (:func:`build_distilbert_student`);
TinyBERT-style students are also narrower, and keep the hidden units, heads and neurons of largest weight norm
(:func:`truncate_teacher`).
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel

from distill.config import TinyBertStudentConfig
from distill.errors import StudentError

LAYER_KEY = re.compile(r"(?<=\.layer\.)(\d+)(?=\.)")
"""Matches the layer index in parameter names such as ``bert.encoder.layer.3.attention.self.query.weight``."""


def build_distilbert_student(teacher: PreTrainedModel, layer_map: list[int]) -> PreTrainedModel:
    """A student with the teacher's width and ``len(layer_map)`` layers, student layer ``k`` copied from
    teacher layer ``layer_map[k]``; embeddings, pooler and classifier are copied unchanged.

    The student is a plain ``transformers`` model of the teacher's class and attention implementation.
    """
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layer_map)
    student = AutoModelForSequenceClassification.from_config(config)
    teacher_state = teacher.state_dict()
    student_state: dict[str, torch.Tensor] = {}
    for name in student.state_dict():
        match = LAYER_KEY.search(name)
        source = name if match is None else LAYER_KEY.sub(str(layer_map[int(match.group(1))]), name, count=1)
        if source not in teacher_state:
            raise StudentError(
                f"cannot initialise student parameter {name}: the teacher has no {source}; "
                "use a BERT-family teacher with the standard layer layout"
            )
        student_state[name] = teacher_state[source].detach().clone()
    student.load_state_dict(student_state, strict=True)
    return student


def student_config_for(teacher: PreTrainedModel | PretrainedConfig, spec: TinyBertStudentConfig) -> Any:
    """The teacher's HF config (``teacher`` is the model or its config) with the student's depth and widths
    (vocabulary and tokenizer shared)."""
    config = copy.deepcopy(teacher if isinstance(teacher, PretrainedConfig) else teacher.config)
    config.num_hidden_layers = spec.num_layers
    config.hidden_size = spec.hidden_size
    config.num_attention_heads = spec.num_attention_heads
    config.intermediate_size = spec.intermediate_size
    return config


def head_size(config: PretrainedConfig) -> int:
    return config.hidden_size // config.num_attention_heads


def shrink_problem(teacher: PretrainedConfig, student: PretrainedConfig) -> str | None:
    """Why ``student`` cannot be truncated from ``teacher`` (a dimension it would have to grow), or None."""
    t_head, s_head = head_size(teacher), head_size(student)
    too_big = [
        f"{name} {getattr(student, name)} > {getattr(teacher, name)}"
        for name in ("hidden_size", "num_attention_heads", "intermediate_size")
        if getattr(student, name) > getattr(teacher, name)
    ]
    if s_head > t_head:
        too_big.append(f"head size {s_head} > {t_head}")
    if not too_big:
        return None
    return (
        f"init: truncate can only shrink the teacher, but the student has {', '.join(too_big)}; "
        "make the student narrower or use init: random"
    )


RESIDUAL_VECTORS = (
    "attention.output.dense.bias",
    "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias",
    "output.dense.bias",
    "output.LayerNorm.weight",
    "output.LayerNorm.bias",
)
"""Per-layer vectors that live in the residual stream: sliced to the kept hidden units."""


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest scores, in ascending index order (so kept units keep their order)."""
    return torch.topk(scores, k).indices.sort().values


def truncate_teacher(teacher: PreTrainedModel, student: PreTrainedModel, layer_map: list[int]) -> dict[str, Any]:
    """Initialise ``student`` (narrower, shallower, same family) from ``teacher`` in place; returns what was kept.

    The rule, by weight magnitude:
    - hidden units: the ``hidden_size`` residual dimensions whose word-embedding columns have the largest L2 norm,
      the same units in every layer (the residual stream must line up);
    - attention heads: the heads with the largest ``|Wq||Wk| + |Wv||Wo|`` (Frobenius norms of the head's slices);
      within a kept head, the query/key dimensions with the largest ``|q_j||k_j|`` and the value dimensions with
      the largest ``|v_j||o_j|`` (row norms of Wq, Wk, Wv; column norm of Wo);
    - feed-forward neurons: the largest ``|w1_j||w2_j|`` (row of the first dense, column of the second);
    - student layer ``k`` comes from teacher layer ``layer_map[k]``; every sliced LayerNorm keeps its weights.
    """
    t, s = teacher.config, student.config
    problem = shrink_problem(t, s)
    if problem:
        raise StudentError(problem)
    t_head, s_head = head_size(t), head_size(s)
    ts = teacher.state_dict()
    hidden = _top(ts["bert.embeddings.word_embeddings.weight"].norm(dim=0), s.hidden_size)
    state: dict[str, torch.Tensor] = {}
    for part in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        state[f"bert.embeddings.{part}.weight"] = ts[f"bert.embeddings.{part}.weight"][:, hidden]
    for param in ("weight", "bias"):
        state[f"bert.embeddings.LayerNorm.{param}"] = ts[f"bert.embeddings.LayerNorm.{param}"][hidden]
    kept_heads = []
    for k, source in enumerate(layer_map):
        src, dst = f"bert.encoder.layer.{source}.", f"bert.encoder.layer.{k}."
        wq, wk, wv = (ts[f"{src}attention.self.{n}.weight"] for n in ("query", "key", "value"))
        wo = ts[f"{src}attention.output.dense.weight"]
        by_head = lambda w: w.reshape(t.num_attention_heads, t_head, -1)  # noqa: E731 - (heads, head_dim, in)
        head_score = by_head(wq).flatten(1).norm(dim=1) * by_head(wk).flatten(1).norm(dim=1) + by_head(wv).flatten(
            1
        ).norm(dim=1) * wo.T.reshape(t.num_attention_heads, t_head, -1).flatten(1).norm(dim=1)
        heads = _top(head_score, s.num_attention_heads)
        kept_heads.append(heads.tolist())
        qk_rows, v_rows = [], []
        for head in heads.tolist():
            rows = torch.arange(head * t_head, (head + 1) * t_head)
            qk_rows.append(rows[_top(wq[rows].norm(dim=1) * wk[rows].norm(dim=1), s_head)])
            v_rows.append(rows[_top(wv[rows].norm(dim=1) * wo[:, rows].norm(dim=0), s_head)])
        qk, v = torch.cat(qk_rows), torch.cat(v_rows)
        for name, rows in (("query", qk), ("key", qk), ("value", v)):
            state[f"{dst}attention.self.{name}.weight"] = ts[f"{src}attention.self.{name}.weight"][rows][:, hidden]
            state[f"{dst}attention.self.{name}.bias"] = ts[f"{src}attention.self.{name}.bias"][rows]
        state[f"{dst}attention.output.dense.weight"] = wo[hidden][:, v]
        w1, w2 = ts[f"{src}intermediate.dense.weight"], ts[f"{src}output.dense.weight"]
        ffn = _top(w1.norm(dim=1) * w2.norm(dim=0), s.intermediate_size)
        state[f"{dst}intermediate.dense.weight"] = w1[ffn][:, hidden]
        state[f"{dst}intermediate.dense.bias"] = ts[f"{src}intermediate.dense.bias"][ffn]
        state[f"{dst}output.dense.weight"] = w2[hidden][:, ffn]
        for name in RESIDUAL_VECTORS:
            state[dst + name] = ts[src + name][hidden]
    state["bert.pooler.dense.weight"] = ts["bert.pooler.dense.weight"][hidden][:, hidden]
    state["bert.pooler.dense.bias"] = ts["bert.pooler.dense.bias"][hidden]
    state["classifier.weight"] = ts["classifier.weight"][:, hidden]
    state["classifier.bias"] = ts["classifier.bias"]
    missing = set(student.state_dict()) - set(state)
    if missing:
        raise StudentError(
            f"init: truncate does not know how to initialise {sorted(missing)[:3]}; the teacher must be a "
            "BertForSequenceClassification-style model, or use init: random"
        )
    student.load_state_dict({name: value.detach().clone().contiguous() for name, value in state.items()})
    return {"hidden_units": hidden.tolist(), "heads": kept_heads}
