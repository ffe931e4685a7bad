"""Quantisation-aware distillation: the fake quantisers emulate ONNX Runtime's INT8 kernels, the fine-tuning trains
and is reused, and its candidates join the post-training ones, judged against the teacher."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from distill.config import Config, ExportConfig, Int8Config
from distill.export import input_names, trace_to_onnx
from distill.fidelity import qat_failures, teacher_agreement, wants_qat
from distill.files import read_json
from distill.int8 import Int8Spec, PreparedGraph
from distill.layout import TRAIN_LOG
from distill.optimize import INT8_FILE, optimize_bundle
from distill.qat import QAT_DIR, RECORD_FILE, QatLinear, finetune_qat, prepare_qat, strip_qat
from distill.runtime import create_session
from tests.conftest import make_tiny_bert, tiny_task
from tests.test_optimize import EXPORT, exported, fresh_copy  # noqa: F401 - the module fixture is used here

TOLERANCE = 1e-4
"""Largest |logit difference|, relative to the largest |logit| (at least 1), between the fake-quantised PyTorch model
and ONNX Runtime's dynamic INT8 graph of its weights, at batch 1: the same int8 grids, so only float rounding
differs (measured: about 1e-7)."""


def random_inputs(vocab: int, seed: int, length: int = 12) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (1, length), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


@pytest.fixture
def trained_fake_quant(tmp_path) -> tuple[torch.nn.Module, Path]:
    """A tiny BERT prepared for QAT and trained a few steps (so its weights moved), then saved."""
    model = AutoModelForSequenceClassification.from_pretrained(make_tiny_bert(tmp_path / "tiny"))
    assert prepare_qat(model) == 4 * 6 + 2, "six linear layers per encoder layer, the pooler and the classifier"
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    for seed in range(3):
        inputs = random_inputs(model.config.vocab_size, seed)
        loss = model(**inputs, labels=torch.tensor([seed % 2])).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    model.eval()
    model.save_pretrained(tmp_path / "saved")
    return model, tmp_path / "saved"


def test_fake_quant_model_matches_onnx_runtime_int8_graph_of_its_weights(trained_fake_quant, tmp_path):
    model, saved = trained_fake_quant
    assert isinstance(model.bert.encoder.layer[0].attention.self.query, QatLinear)
    with torch.no_grad():
        fake = [model(**random_inputs(model.config.vocab_size, 100 + i)).logits.numpy() for i in range(6)]
    plain = AutoModelForSequenceClassification.from_pretrained(saved)  # loads as plain fp32, buffers ignored
    assert type(plain.bert.encoder.layer[0].attention.self.query) is torch.nn.Linear
    assert torch.equal(plain.classifier.weight, model.classifier.weight)
    trace_to_onnx(plain, tmp_path / "model.onnx", input_names(plain), 17)
    spec = Int8Spec("dynamic", tmp_path / "model.onnx", static=False, per_channel=True)
    with PreparedGraph(tmp_path / "model.onnx", Int8Config()) as prepared:
        prepared.quantize(spec, tmp_path / "int8.onnx")
    session = create_session(tmp_path / "int8.onnx", 1)
    names = [node.name for node in session.get_inputs()]
    with torch.no_grad():
        fp32 = [plain(**random_inputs(model.config.vocab_size, 100 + i)).logits.numpy() for i in range(6)]
    for i, expected in enumerate(fake):
        feeds = {name: tensor.numpy() for name, tensor in random_inputs(model.config.vocab_size, 100 + i).items()}
        got = session.run(None, {name: feeds[name] for name in names})[0]
        scale = max(1.0, float(np.abs(expected).max()))
        assert np.abs(got - expected).max() <= TOLERANCE * scale
        assert np.abs(got - fp32[i]).max() > 10 * TOLERANCE * scale, "the INT8 graph does differ from the fp32 one"


def test_static_qdq_graph_of_a_fake_quant_model_loads_and_stays_close(trained_fake_quant, tmp_path):
    model, saved = trained_fake_quant
    plain = AutoModelForSequenceClassification.from_pretrained(saved)
    trace_to_onnx(plain, tmp_path / "model.onnx", input_names(plain), 17)
    calibration = [
        {name: tensor[0].tolist() for name, tensor in random_inputs(model.config.vocab_size, 200 + i).items()}
        for i in range(16)
    ]
    spec = Int8Spec("static", tmp_path / "model.onnx", static=True, per_channel=True)
    with PreparedGraph(tmp_path / "model.onnx", Int8Config(), calibration) as prepared:
        prepared.quantize(spec, tmp_path / "qdq.onnx")
    ops = {node.op_type for node in onnx.load(str(tmp_path / "qdq.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    session = create_session(tmp_path / "qdq.onnx", 1)
    names = [node.name for node in session.get_inputs()]
    for i in range(4):
        inputs = random_inputs(model.config.vocab_size, 200 + i)
        with torch.no_grad():
            expected = model(**inputs).logits.numpy()
        got = session.run(None, {name: inputs[name].numpy() for name in names})[0]
        # calibrated activation ranges instead of each input's own: close, not equal
        assert np.abs(got - expected).max() <= 0.05 * max(1.0, float(np.abs(expected).max()))


def test_strip_qat_restores_plain_linear_layers_with_the_trained_weights(trained_fake_quant):
    model, _ = trained_fake_quant
    weight = model.bert.pooler.dense.weight
    strip_qat(model)
    assert not any(isinstance(module, QatLinear) for module in model.modules())
    assert model.bert.pooler.dense.weight is weight


def qat_config(tmp_path: Path, steps: int = 4) -> Config:
    return Config.model_validate(
        {
            "task": "sst2",
            "data": {"train": str(tmp_path / "train.tsv"), "validation": str(tmp_path / "dev.tsv"), "max_length": 32},
            "students": [{"name": "s", "recipe": "distilbert", "num_layers": 2}],
            "export": {"int8": {"qat_steps": steps, "qat_batch_size": 8}},
        }
    )


def test_finetune_qat_trains_saves_a_plain_model_and_reuses_it(tmp_path, tiny_bert_dir):
    data = tiny_task(tmp_path, dev_rows=16, train_rows=48)
    config = qat_config(tmp_path)
    student_dir = make_tiny_bert(tmp_path / "student", num_layers=2, seed=3)
    model_dir = finetune_qat(config, config.students[0], data, student_dir, tiny_bert_dir, tmp_path / "cache")
    assert model_dir == student_dir / QAT_DIR
    record = read_json(model_dir / RECORD_FILE)
    assert record["linear_layers"] == 2 * 6 + 2 and record["settings"]["steps"] == 4
    assert not (model_dir / "checkpoints").exists(), "the training state is removed once the model is saved"
    steps = [json.loads(line).get("step") for line in (model_dir / TRAIN_LOG).read_text().splitlines()]
    assert max(steps) == 4 and 1 <= record["best"]["step"] <= 4, "four steps, the best dev evaluation kept"
    tuned = AutoModelForSequenceClassification.from_pretrained(model_dir)
    assert type(tuned.classifier) is torch.nn.Linear
    assert list(tmp_path.joinpath("cache").rglob("*.npy")), "the teacher's logits come from the shared cache"

    stamp = (model_dir / RECORD_FILE).stat().st_mtime_ns
    assert finetune_qat(config, config.students[0], data, student_dir, tiny_bert_dir, tmp_path / "cache") == model_dir
    assert (model_dir / RECORD_FILE).stat().st_mtime_ns == stamp, "same student and settings: reused"
    again = qat_config(tmp_path, steps=2)
    finetune_qat(again, again.students[0], data, student_dir, tiny_bert_dir, tmp_path / "cache")
    assert read_json(model_dir / RECORD_FILE)["settings"]["steps"] == 2, "other settings: trained again"


def candidate(p50: float, passed: bool) -> dict:
    return {"p50_ms": p50, "passed": passed, "padding_passed": True}


def test_qat_runs_automatically_only_when_full_speed_int8_breaks_the_budget():
    fast_fails, slow_passes = candidate(1.0, False), candidate(1.5, True)
    assert wants_qat("auto", [fast_fails, slow_passes]), "the passing graph gives back a third of the speed"
    assert wants_qat("auto", [fast_fails]), "nothing passed"
    assert not wants_qat("auto", [candidate(1.0, True), candidate(0.99, False)]), "within 10% of the fastest"
    assert not wants_qat("auto", [candidate(1.0, True)])
    assert not wants_qat("auto", []), "nothing was built"
    assert wants_qat(True, [candidate(1.0, True)]) and not wants_qat(False, [fast_fails])


def test_qat_candidates_are_judged_by_metric_and_teacher_agreement_not_flips():
    teacher = np.array([[1.0, 0.0]] * 10)
    fp32 = teacher.copy()
    fp32[0] = [0.0, 1.0]  # the fp32 student agrees with the teacher on 9 of 10
    cfg = Int8Config()
    check = {"metric": "accuracy", "metric_drop": 0.0, "flip_rate": 0.5}
    better = fp32.copy()
    better[0] = [1.0, 0.0]
    assert qat_failures({**check, **teacher_agreement(teacher, fp32, better, False)}, cfg) == []
    worse = fp32.copy()
    worse[1] = [0.0, 1.0]
    (failure,) = qat_failures({**check, **teacher_agreement(teacher, fp32, worse, False)}, cfg)
    assert "agreement with the teacher 0.8000 vs the fp32 student's 0.9000" in failure
    dropped = {**check, "metric_drop": 0.02, **teacher_agreement(teacher, fp32, fp32, False)}
    assert qat_failures(dropped, cfg)[0].startswith("dev accuracy drop 2.00 pt")


def test_qat_candidates_join_the_post_training_ones_and_are_recorded(exported, tmp_path):  # noqa: F811
    bundle, rows, labels = exported
    bundle = fresh_copy(bundle, tmp_path)
    int8 = Int8Config(qat=True, max_flip_rate=0.0, max_metric_drop=0.0, sensitivity=False, quantize_embeddings=False)
    cfg = ExportConfig(**{**EXPORT.model_dump(), "int8": int8})
    dev_logits = np.load(bundle / "dev_logits.npy")
    built = []

    def qat(scratch: Path, skip_layer_norm: bool) -> tuple[Path, Path | None]:  # the fine-tuning: same weights
        built.append((scratch, skip_layer_norm))
        shutil.copyfile(bundle / "model.onnx", scratch / "qat.onnx")
        return scratch / "qat.onnx", None

    record = optimize_bundle(
        bundle, cfg, rows, labels, ["accuracy"], calibration=rows[:8], seq_length=16, threads=1,
        teacher_dev=dev_logits, qat=qat,
    )  # fmt: skip
    candidates = record["int8"]["candidates"]
    post_training = [c for c in candidates if not c["qat"]]
    qat_built = [c for c in candidates if c["qat"]]
    assert len(built) == 1 and built[0][1] == (record["optimized"]["layer_norm"]["kept"] == "fused")
    assert record["int8"]["qat"]["candidates"] == [c["setting"] for c in qat_built]
    assert [c["setting"] for c in qat_built] == [
        "QAT dynamic per-channel (plain)",
        "QAT static QDQ per-channel (plain)",
    ]
    for c in qat_built:
        assert c["fp32_agreement_with_teacher"] == 1.0 and "p50_ms" in c and "flip_rate" in c
        assert c["passed"] == (c["metric_drop"] <= 0 and c["agreement_with_teacher"] == 1.0 and c["padding_passed"])
    assert post_training and not any(c["passed"] for c in post_training if c["prediction_flips"] > 0)
    shipped = [c for c in candidates if c["shipped"]]
    assert len(shipped) <= 1 and (bundle / INT8_FILE).is_file() == bool(shipped)

    quiet = fresh_copy(bundle, tmp_path / "off")
    off = ExportConfig(**{**EXPORT.model_dump(), "int8": int8.model_copy(update={"qat": False})})
    built.clear()
    record = optimize_bundle(
        quiet, off, rows, labels, ["accuracy"], calibration=rows[:8], seq_length=16, threads=1,
        teacher_dev=dev_logits, qat=qat,
    )  # fmt: skip
    assert not built and "qat" not in record["int8"]


def test_report_note_names_the_fine_tuning_and_the_teacher_agreement():
    from distill.bundle_records import Int8Candidate
    from distill.report.candidates import _qat_note

    qat = {"steps": 500, "learning_rate": 2e-5}
    built = Int8Candidate(setting="QAT dynamic per-channel (fused)", qat=True, agreement_with_teacher=0.93)
    built.fp32_agreement_with_teacher = 0.92
    note = _qat_note("distil3", qat, [built])
    assert "(500 steps, learning rate 2e-05)" in note and "QAT dynamic per-channel (fused) 0.9300" in note
    assert "against the fp32 student's 0.9200" in note
    assert "failed: out of memory" in _qat_note("distil3", {**qat, "error": "out of memory"}, [])
