"""TinyBERT-style students: narrower and shallower than the teacher, distilled in two stages.

Stage 1 (intermediate layers): MSE between the student's embedding output and hidden states, projected to the
teacher's width by learned linear maps, and the teacher's; MSE between attention maps (pre-softmax scores, as
TinyBERT does, or probabilities). Stage 2 (prediction layer): KL between softened logits (MSE for regression).

The projections live in a wrapper (:class:`ProjectedStudent`) that only stage 1 trains: they are saved in its
checkpoints and in ``stage1/final/projections.safetensors``, never in the exported student.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from safetensors.torch import save_file
from torch import nn
from transformers import (
    AttentionInterface,
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.modeling_outputs import SequenceClassifierOutput

from distill import distributed
from distill.cache import with_teacher_logits
from distill.config import Config, TinyBertStudentConfig
from distill.data import TaskData, tokenize
from distill.errors import StudentError
from distill.files import atomic_dir
from distill.mapping import hidden_state_pairs, select_layers
from distill.objective import DistilBertObjective, IntermediateObjective, LabelObjective
from distill.students import initialisation_source
from distill.train import train_model

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
    t_head, s_head = t.hidden_size // t.num_attention_heads, s.hidden_size // s.num_attention_heads
    too_big = [
        f"{name} {getattr(s, name)} > {getattr(t, name)}"
        for name in ("hidden_size", "num_attention_heads", "intermediate_size")
        if getattr(s, name) > getattr(t, name)
    ]
    if s_head > t_head:
        too_big.append(f"head size {s_head} > {t_head}")
    if too_big:
        raise StudentError(
            f"init: truncate can only shrink the teacher, but the student has {', '.join(too_big)}; "
            "make the student narrower or use init: random"
        )
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


def student_config_for(teacher: PreTrainedModel, spec: TinyBertStudentConfig) -> Any:
    """The teacher's HF config with the student's depth and widths (vocabulary and tokenizer shared)."""
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = spec.num_layers
    config.hidden_size = spec.hidden_size
    config.num_attention_heads = spec.num_attention_heads
    config.intermediate_size = spec.intermediate_size
    return config


def build_tinybert_student(
    teacher: PreTrainedModel, spec: TinyBertStudentConfig, layer_map: list[int], seed: int
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """The student and a record of its initialisation; the same ``seed`` gives the same weights."""
    torch.manual_seed(seed)
    if spec.init == "checkpoint":
        path = Path(str(spec.init_checkpoint)).expanduser()
        if not (path / "config.json").is_file():
            raise StudentError(
                f"init_checkpoint {path} is not a saved model directory (no config.json); point it at a directory "
                "written by save_pretrained, such as RUN/students/NAME/stage1/final"
            )
        student = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=teacher.config.num_labels, ignore_mismatched_sizes=True
        )
        expected = student_config_for(teacher, spec)
        mismatched = [
            f"{name} {getattr(student.config, name)} (config says {getattr(expected, name)})"
            for name in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")
            if getattr(student.config, name) != getattr(expected, name)
        ]
        if mismatched:
            raise StudentError(
                f"init_checkpoint {path} does not match the student: it has {', '.join(mismatched)}; "
                "set the student's shape to the checkpoint's"
            )
        student.config.id2label, student.config.label2id = teacher.config.id2label, teacher.config.label2id
        return student, {"init": "checkpoint", "checkpoint": str(path)}
    student = AutoModelForSequenceClassification.from_config(student_config_for(teacher, spec))
    if spec.init == "random":
        return student, {"init": "random"}
    kept = truncate_teacher(teacher, student, layer_map)
    return student, {"init": "truncate", "layer_map": layer_map, **kept}


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
        save_file(self.projection_state(), str(path / "projections.safetensors"))


def total_epochs(spec: TinyBertStudentConfig) -> float:
    """Both stages' epochs: the budget of a label-only twin."""
    return spec.prediction.training.epochs + (spec.intermediate.training.epochs if spec.intermediate.enabled else 0)


def train_tinybert(
    config: Config,
    spec: TinyBertStudentConfig,
    data: TaskData,
    teacher_dir: Path,
    student_dir: Path,
    cache_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    validation: Dataset,
) -> tuple[Any, PreTrainedModel, dict[str, Any]]:
    """Run both stages (or label-only training) for ``spec``; returns the train result, the teacher and a
    record for ``distill.json``. ``validation`` is the dev split tokenised by the teacher's ``tokenizer``.

    Stage 1 works in ``student_dir/stage1`` and ends by writing ``stage1/final``; stage 2 in ``student_dir/stage2``.
    A rerun skips a finished stage 1 and resumes an interrupted stage from its newest complete checkpoint.
    """
    from distill.augment import augment_training_set

    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir, attn_implementation="eager")
    layer_map = select_layers(spec.layer_selection, teacher.config.num_hidden_layers, spec.num_layers)
    if spec.num_attention_heads != teacher.config.num_attention_heads and (
        spec.intermediate.enabled and spec.intermediate.alpha_attention > 0
    ):
        if teacher.config.num_attention_heads % spec.num_attention_heads:
            raise StudentError(
                f"attention distillation maps groups of teacher heads onto student heads, but the teacher's "
                f"{teacher.config.num_attention_heads} heads do not split evenly into the student's "
                f"{spec.num_attention_heads}; pick a head count that divides it, or set intermediate.alpha_attention: 0"
            )
    source, origin = initialisation_source(spec, teacher, teacher_dir, config.seed)
    student, init = build_tinybert_student(source, spec, layer_map, config.seed)
    if spec.init == "truncate":
        init["from"] = origin
    del source
    teacher.to(distributed.local_device())  # augmentation filtering and the logit cache run on it
    shape = (
        f"TinyBERT-style, {spec.num_layers} layers, hidden {spec.hidden_size}, {spec.num_attention_heads} heads, "
        f"FFN {spec.intermediate_size}; init {spec.init}"
        + (f" from layers {layer_map} of {origin}" if spec.init == "truncate" else "")
    )

    def budget(t: Any) -> str:
        return f"{t.epochs} epoch(s), batch {t.batch_size}, learning rate {t.learning_rate}"

    record: dict[str, Any] = {
        "architecture": {
            "num_layers": spec.num_layers,
            "hidden_size": spec.hidden_size,
            "num_attention_heads": spec.num_attention_heads,
            "intermediate_size": spec.intermediate_size,
        },
        "init": init,
        "layer_map": layer_map,
    }
    if spec.objective == "labels":
        training = spec.prediction.training.model_copy(update={"epochs": total_epochs(spec)})
        train_set = tokenize(data.train, tokenizer, config.data.max_length)
        result = train_model(
            student, train_set, validation, tokenizer, training, student_dir, data.metrics, config.seed,
            LabelObjective(),
        )  # fmt: skip
        record["loss"] = {"labels": "cross-entropy" if not data.is_regression else "mse"}
        record["description"] = [
            f"Recipe: {shape}; trained on hard labels only (label-only twin, both stages' epochs).",
            f"Training: {budget(training)}; best dev checkpoint kept.",
        ]
        return result, teacher, record

    train_data, known_logits = data.train, None
    if spec.augmentation.enabled:
        with distributed.main_process_first():  # rank 0 builds and caches the set; the others read the cache
            train_data, augmentation, known_logits = augment_training_set(
                data, teacher, teacher_dir, tokenizer, spec.augmentation, config.data.max_length, config.seed, cache_dir
            )
        record["augmentation"] = augmentation
    train_set = tokenize(train_data, tokenizer, config.data.max_length)
    stage_dir = student_dir / "stage1"
    final = stage_dir / "final"
    stage1 = spec.intermediate
    if stage1.enabled:
        pairs = hidden_state_pairs(layer_map)
        objective = IntermediateObjective(
            layer_map=layer_map,
            alpha_embedding=stage1.alpha_embedding,
            alpha_hidden=stage1.alpha_hidden,
            alpha_attention=stage1.alpha_attention,
            student_heads=spec.num_attention_heads,
        )
        if not (final / "config.json").is_file():
            attention = SCORES_ATTENTION if stage1.attention_target == "scores" else "eager"
            teacher.set_attn_implementation(attention)
            student.set_attn_implementation(attention)
            torch.manual_seed(config.seed)
            wrapper = ProjectedStudent(student, teacher.config.hidden_size)
            train_model(
                wrapper, train_set, validation, tokenizer, stage1.training, stage_dir, data.metrics, config.seed,
                objective, teacher=teacher, select_best=False,
            )  # fmt: skip
            student.set_attn_implementation("eager")
            teacher.set_attn_implementation("eager")
            if distributed.is_main():
                with atomic_dir(final) as tmp:
                    wrapper.save_pretrained(tmp)
            distributed.barrier()  # every rank starts stage 2 from the saved stage-1 student
        student = AutoModelForSequenceClassification.from_pretrained(final)
        record["intermediate"] = {
            **stage1.model_dump(mode="json"),
            "hidden_state_pairs": pairs,
            "projections": "stage1/final/projections.safetensors",
            "convention": "MSE(W x student, teacher) per mapped hidden state; attention MSE over heads and real "
            "(query, key) pairs; teacher heads averaged in groups when the student has fewer",
        }
    stage2 = spec.prediction
    objective2 = DistilBertObjective(
        layer_map=layer_map,
        temperature=stage2.temperature,
        kd_loss=stage2.kd_loss,
        alpha_kd=stage2.alpha_kd,
        alpha_ce=stage2.alpha_ce,
        alpha_cos=0.0,
    )
    stage2_set, record["stage2_teacher_logits"] = with_teacher_logits(
        train_set, teacher, teacher_dir, tokenizer, cache_dir, known=known_logits
    )
    result = train_model(
        student, stage2_set, validation, tokenizer, stage2.training, student_dir / "stage2", data.metrics,
        config.seed, objective2, teacher=teacher,
    )  # fmt: skip
    record["loss"] = {
        "kd": stage2.kd_loss,
        "temperature": stage2.temperature,
        "weights": {"kd": stage2.alpha_kd, "ce": stage2.alpha_ce},
        "convention": "KL(teacher_T || student_T) x T^2 (MSE for regression)",
    }
    record["prediction"] = stage2.model_dump(mode="json")
    record["description"] = [
        f"Recipe: {shape}.",
        (
            f"Stage 1 (intermediate layers, {budget(stage1.training)}): MSE on projected embeddings "
            f"(x{stage1.alpha_embedding}) and hidden states (x{stage1.alpha_hidden}), attention "
            f"{stage1.attention_target} MSE (x{stage1.alpha_attention})."
        )
        if stage1.enabled
        else "Stage 1 skipped.",
        f"Stage 2 (prediction layer, {budget(stage2.training)}): {stage2.kd_loss} on logits at temperature "
        f"{stage2.temperature} (x{stage2.alpha_kd}) + CE (x{stage2.alpha_ce}); best dev checkpoint kept.",
    ]
    if "augmentation" in record:
        aug = record["augmentation"]
        record["description"].append(
            f"Augmented data: {aug['kept']} copies kept of {aug['generated']} generated "
            f"({aug['dropped_disagreeing']} dropped because the teacher labelled them differently)."
        )
    record["train_examples"] = len(train_set)
    return result, teacher, record
