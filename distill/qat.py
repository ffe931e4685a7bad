"""Quantisation-aware distillation: a trained student fine-tuned through fake quantisation, so that its INT8 graph
keeps the accuracy that post-training INT8 loses.

Every ``nn.Linear`` becomes a :class:`QatLinear` (torch's own QAT linear: weights fake-quantised per output channel,
symmetric int8 in [-127, 127], as ONNX Runtime quantises weights), whose input is also fake-quantised per tensor to
uint8 with the range of each batch, as ONNX Runtime's dynamic INT8 kernels quantise activations. The student is then
trained for a short budget on the teacher's cached logits (plus the hard-label term as the student's recipe weights
it), and the best dev checkpoint, scored through the fake quantisers, is kept. :class:`QatLinear` keeps
``nn.Linear``'s parameter names, so the saved model loads as a plain fp32 model whose weights sit on the int8 grid
the fake quantisers trained them for; :mod:`distill.optimize` quantises it with ONNX Runtime like any candidate and
judges it against the teacher (:func:`distill.fidelity.qat_failures`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from torch.ao.nn.qat import Linear as TorchQatLinear
from torch.ao.quantization import (
    FakeQuantize,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    QConfig,
)
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from distill.cache import with_teacher_logits
from distill.config import Config, DistilBertStudentConfig, Int8Config, TinyBertStudentConfig, TrainingConfig
from distill.data import TaskData, tokenize
from distill.files import file_digest, read_json, write_json
from distill.objective import DistilBertObjective
from distill.train import remove_checkpoints, train_model

QAT_DIR = "qat"
"""A student's quantisation-aware fine-tuned model lives in ``RUN/students/NAME/qat``."""
RECORD_FILE = "qat.json"
"""Written last into the QAT directory: the settings it was trained with (a rerun with the same ones reuses it)."""


def fake_quant_qconfig() -> QConfig:
    """Weights per output channel, symmetric int8 in [-127, 127]; activations per tensor, uint8, range of the batch."""
    weight = FakeQuantize.with_args(
        observer=MovingAveragePerChannelMinMaxObserver,
        averaging_constant=1.0,  # the current weights' range (not the union over training), as ORT will see them
        quant_min=-127,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
    )
    activation = FakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver,
        averaging_constant=1.0,  # each batch's own range, as dynamic INT8 computes it at run time
        quant_min=0,
        quant_max=255,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
    )
    return QConfig(activation=activation, weight=weight)


class QatLinear(TorchQatLinear):
    """torch's QAT ``Linear`` (fake-quantised weight) whose input is fake-quantised too.

    Its parameters keep ``nn.Linear``'s names (``weight``, ``bias``); the fake quantisers add buffers only, which a
    plain model ignores when it loads the state dict.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, qconfig: QConfig | None = None):
        qconfig = qconfig or fake_quant_qconfig()
        super().__init__(in_features, out_features, bias=bias, qconfig=qconfig)
        self.input_fake_quant = qconfig.activation()

    @classmethod
    def from_linear(cls, linear: nn.Linear, qconfig: QConfig) -> QatLinear:
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, qconfig)
        module.weight = linear.weight
        module.bias = linear.bias
        return module.to(linear.weight.device)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.Linear's argument name
        return super().forward(self.input_fake_quant(input))


def prepare_qat(model: nn.Module, qconfig: QConfig | None = None) -> int:
    """Replace every ``nn.Linear`` of ``model`` in place by a :class:`QatLinear`; returns how many were replaced."""
    qconfig = qconfig or fake_quant_qconfig()
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, QatLinear.from_linear(child, qconfig))
                replaced += 1
    return replaced


def strip_qat(model: nn.Module) -> nn.Module:
    """Replace every :class:`QatLinear` of ``model`` in place by a plain ``nn.Linear`` with the same parameters."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, QatLinear):
                linear = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                linear.weight, linear.bias = child.weight, child.bias
                setattr(parent, name, linear)
    return model


def qat_training(cfg: Int8Config) -> TrainingConfig:
    """The short fine-tuning budget: ``qat_steps`` steps, evaluated on dev five times, no early stop."""
    return TrainingConfig(
        max_steps=cfg.qat_steps,
        epochs=1.0,  # (max_steps decides the length: the data is cycled as often as it takes)
        learning_rate=cfg.qat_learning_rate,
        batch_size=cfg.qat_batch_size,
        eval_steps=max(1, cfg.qat_steps // 5),
        save_steps=max(1, cfg.qat_steps // 5),
        warmup_ratio=0.1,
    )


def objective_for(spec: DistilBertStudentConfig | TinyBertStudentConfig) -> DistilBertObjective:
    """Logit distillation on the teacher's cached logits, with the student recipe's temperature and its hard-label
    weight beside the logit term (TinyBERT-style: its prediction stage's)."""
    if isinstance(spec, DistilBertStudentConfig):
        temperature, alpha_kd, alpha_ce = spec.temperature, spec.alpha_kd, spec.alpha_ce
    else:
        stage = spec.prediction
        temperature, alpha_kd, alpha_ce = stage.temperature, stage.alpha_kd, stage.alpha_ce
    return DistilBertObjective([0], temperature, "kl", alpha_kd, alpha_ce, alpha_cos=0.0)


def settings(
    config: Config, spec: DistilBertStudentConfig | TinyBertStudentConfig, student_dir: Path
) -> dict[str, Any]:
    """What a saved QAT model depends on: the student's weights and the fine-tuning; other ones train it again."""
    int8 = config.export.int8
    return {
        "student_weights": file_digest(*sorted(student_dir.glob("*.safetensors"))),
        "steps": int8.qat_steps,
        "learning_rate": int8.qat_learning_rate,
        "batch_size": int8.qat_batch_size,
        "seed": config.seed,
        "objective": repr(objective_for(spec)),
        "max_length": config.data.max_length,
    }


def finetune_qat(
    config: Config,
    spec: DistilBertStudentConfig | TinyBertStudentConfig,
    data: TaskData,
    student_dir: Path,
    teacher_dir: Path,
    cache_dir: Path,
) -> Path:
    """Fine-tune the saved student in ``student_dir`` through fake quantisation into ``student_dir/qat``.

    Reuses a finished QAT model trained with the same settings; training resumes from its checkpoints. Returns
    the QAT model directory (a plain ``save_pretrained`` model and its tokenizer, plus ``qat.json``).
    """
    qat_dir = student_dir / QAT_DIR
    record_path = qat_dir / RECORD_FILE
    wanted = settings(config, spec, student_dir)
    if record_path.is_file() and read_json(record_path).get("settings") == wanted:
        return qat_dir
    if record_path.is_file():  # trained with other settings: train again from scratch
        record_path.unlink()
        remove_checkpoints(qat_dir)
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    student = AutoModelForSequenceClassification.from_pretrained(student_dir, use_safetensors=True)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir, use_safetensors=True)
    train_set = tokenize(data.train, tokenizer, config.data.max_length)
    train_set, _ = with_teacher_logits(train_set, teacher, teacher_dir, tokenizer, cache_dir)
    validation = tokenize(data.validation, tokenizer, config.data.max_length)
    del teacher
    replaced = prepare_qat(student)
    with _quiet_loading():
        result = train_model(
            student, train_set, validation, tokenizer, qat_training(config.export.int8), qat_dir, data.metrics,
            config.seed, objective_for(spec),
        )  # fmt: skip
    model: PreTrainedModel = result.model  # the best checkpoint, loaded as a plain fp32 model
    model.save_pretrained(qat_dir)
    tokenizer.save_pretrained(qat_dir)
    remove_checkpoints(qat_dir)
    write_json(record_path, {"settings": wanted, "linear_layers": replaced, "best": result.best})
    return qat_dir


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """The fake quantisers' buffers are unexpected keys to the plain model that loads the best checkpoint, by design:
    transformers need not print them."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
