"""Graph optimisation and INT8 with fidelity budgets and fallbacks; the padding check; bundles without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from distill.bench import padding_check
from distill.config import ExportConfig, Int8Config
from distill.data import tokenize
from distill.export import export_onnx
from distill.files import read_json
from distill.optimize import INT8_FALLBACKS, INT8_FILE, OPTIMIZED_FILE, optimize_bundle
from distill.runtime import OnnxClassifier, create_session, padded_feeds
from tests.conftest import REPO_ROOT, tiny_task

EXPORT = ExportConfig(check_shapes=[(1, 16), (4, 24)])
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


@pytest.fixture(scope="module")
def exported(tiny_bert_dir: Path, tmp_path_factory):
    """A tiny BERT exported to a bundle, with its tokenised dev rows and labels."""
    data_dir = tmp_path_factory.mktemp("optimize_data")
    data = tiny_task(data_dir, 48)
    validation = tokenize(data.validation, AutoTokenizer.from_pretrained(tiny_bert_dir), 32)
    bundle = data_dir / "bundle"
    export_onnx(tiny_bert_dir, bundle, EXPORT, validation)
    return bundle, validation.select_columns(INPUTS).to_list(), np.asarray(data.validation["label"])


def fresh_copy(bundle: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    return target


def test_optimisation_fuses_attention_and_int8_passes_budget(exported, tmp_path):
    bundle, rows, labels = exported
    bundle = fresh_copy(bundle, tmp_path)
    record = optimize_bundle(bundle, EXPORT, rows, labels, ["accuracy"])

    optimized = record["optimized"]
    assert optimized["kept"] and (bundle / OPTIMIZED_FILE).is_file()
    assert optimized["fused_ops"]["Attention"] == 4, "one fused attention per layer (eager export, TorchScript)"
    assert optimized["fused_ops"]["EmbedLayerNormalization"] == 1
    assert optimized["flip_rate"] == 0.0 and optimized["max_abs_diff"] < 1e-3
    int8 = record["int8"]
    assert int8["kept"] and (bundle / INT8_FILE).is_file()
    chosen = [attempt for attempt in int8["attempts"] if attempt.get("passed")]
    assert len(chosen) == 1 and chosen[0]["flip_rate"] <= 0.01 and chosen[0]["metric_drop"] <= 0.01
    assert read_json(bundle / "fidelity.json")["int8"] == int8, "the record is merged into fidelity.json"
    assert (bundle / INT8_FILE).stat().st_size < (bundle / "model.onnx").stat().st_size


def test_impossible_int8_budget_tries_every_fallback_then_ships_fp32_only(exported, tmp_path):
    bundle, rows, labels = exported
    bundle = fresh_copy(bundle, tmp_path)
    # A negative allowed drop cannot be met by any setting (the config itself only accepts drops >= 0).
    strict = EXPORT.model_copy(
        update={
            "int8": Int8Config.model_construct(
                **{**Int8Config().model_dump(), "max_flip_rate": 0.0, "max_metric_drop": -1.0}
            )
        }
    )
    record = optimize_bundle(bundle, strict, rows, labels, ["accuracy"])
    assert [attempt["setting"] for attempt in record["int8"]["attempts"]] == list(INT8_FALLBACKS)
    assert not record["int8"]["kept"] and not (bundle / INT8_FILE).exists()
    assert "fidelity budget" in record["int8"]["reason"]


def test_optimisation_outside_budget_keeps_the_unoptimised_graph(exported, tmp_path, monkeypatch):
    bundle, rows, labels = exported
    bundle = fresh_copy(bundle, tmp_path)
    np.save(bundle / "dev_logits.npy", -np.load(bundle / "dev_logits.npy"))  # every reference prediction flipped
    cfg = EXPORT.model_copy(update={"int8": Int8Config(enabled=False)})
    record = optimize_bundle(bundle, cfg, rows, labels, ["accuracy"])
    assert not record["optimized"]["kept"] and not (bundle / OPTIMIZED_FILE).exists()
    assert "unoptimised graph is kept" in record["optimized"]["reason"]


def test_static_int8_calibrates_on_train_rows(exported, tmp_path):
    bundle, rows, labels = exported
    bundle = fresh_copy(bundle, tmp_path)
    cfg = EXPORT.model_copy(
        update={"optimize": False, "int8": Int8Config(mode="static", max_flip_rate=1.0, max_metric_drop=1.0)}
    )
    record = optimize_bundle(bundle, cfg, rows, labels, ["accuracy"], calibration=rows[:16])
    assert record["int8"]["kept"], record["int8"]
    assert record["int8"]["attempts"][0]["source"] == "model.onnx"
    ops = {node.op_type for node in __import__("onnx").load(str(bundle / INT8_FILE)).graph.node}
    assert "QuantizeLinear" in ops, "static quantisation inserts QDQ pairs"


def test_padding_check_passes_for_masked_models_and_catches_mask_bugs(exported):
    bundle, rows, _ = exported
    session = create_session(bundle / "model.onnx", threads=1)

    def run(feeds):
        return session.run(None, feeds)

    def ignore_mask(feeds):
        return session.run(None, {**feeds, "attention_mask": np.ones_like(feeds["attention_mask"])})

    good = padding_check(run, INPUTS, rows)
    assert good["passed"] and good["within_atol"] and good["max_abs_diff"] < 1e-4
    bad = padding_check(ignore_mask, INPUTS, rows)
    assert bad["max_abs_diff"] > 100 * max(good["max_abs_diff"], 1e-7), "attending to padding moves the logits"


def test_padded_feeds_pads_right_with_zero_mask():
    feeds = padded_feeds(
        [{"input_ids": [2, 5, 3], "attention_mask": [1, 1, 1]}, {"input_ids": [2, 3]}], ["input_ids", "attention_mask"]
    )
    assert feeds["input_ids"].tolist() == [[2, 5, 3], [2, 3, 0]]
    assert feeds["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_predict_runs_without_torch_and_matches_plain_onnxruntime(exported, tmp_path):
    bundle, _, _ = exported
    bundle = fresh_copy(bundle, tmp_path)
    optimize_bundle(bundle, EXPORT, *exported[1:], ["accuracy"])
    texts = ["great fun movie", "awful boring plot"]
    blocker = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "from distill.cli import main\n"
        f"sys.argv = ['distill', 'predict', {str(bundle)!r}, *{texts!r}]\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    predicted = [json.loads(line) for line in result.stdout.splitlines()]
    assert [p["text"] for p in predicted] == texts

    # The same bundle with nothing but onnxruntime and tokenizers, as a deployer would load it.
    tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    session = onnxruntime.InferenceSession(str(bundle / INT8_FILE), providers=["CPUExecutionProvider"])
    id2label = json.loads((bundle / "config.json").read_text()).get("id2label") or {"0": "LABEL_0", "1": "LABEL_1"}
    for text, expected in zip(texts, predicted, strict=True):
        encoding = tokenizer.encode(text)
        feeds = {
            "input_ids": np.array([encoding.ids]),
            "attention_mask": np.array([encoding.attention_mask]),
            "token_type_ids": np.array([encoding.type_ids]),
        }
        logits = session.run(None, feeds)[0][0]
        assert id2label[str(int(logits.argmax()))] == expected["label"]
    assert OnnxClassifier(bundle).predict(texts) == [{"label": p["label"], "score": p["score"]} for p in predicted]


def test_predict_reports_a_missing_bundle_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "distill", "predict", str(tmp_path / "nope"), "hello"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: bundle") and len(result.stderr.strip().splitlines()) == 1


def test_quantisation_leaves_no_scratch_files_in_the_working_directory(exported, tmp_path, monkeypatch):
    bundle, rows, labels = exported
    bundle = fresh_copy(bundle, tmp_path / "copy")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    cfg = EXPORT.model_copy(
        update={"optimize": False, "int8": Int8Config(mode="static", max_flip_rate=1.0, max_metric_drop=1.0)}
    )
    record = optimize_bundle(bundle, cfg, rows, labels, ["accuracy"], calibration=rows[:8])
    assert record["int8"]["kept"]
    assert list(workdir.iterdir()) == [], "ORT's shape inference must not dump files where the user runs distill"


def test_fused_attention_fallback_keeps_attention_in_fp32_and_quantises_the_rest(exported, tmp_path):
    import onnx

    from distill.optimize import Int8Attempt, quantize_int8

    bundle, rows, labels = exported
    bundle = fresh_copy(bundle, tmp_path)
    optimize_bundle(bundle, EXPORT.model_copy(update={"int8": Int8Config(enabled=False)}), rows, labels, ["accuracy"])
    ops = {}
    for label, excluded in (("all", ()), ("attention fp32", ("Attention",))):
        target = tmp_path / f"{label}.onnx"
        attempt = Int8Attempt(label, bundle / OPTIMIZED_FILE, False, False, False, excluded)
        quantize_int8(attempt, target, Int8Config(), 4, [])
        ops[label] = [node.op_type for node in onnx.load(str(target)).graph.node]
    assert ops["all"].count("QAttention") == 4 and "Attention" not in ops["all"]
    assert ops["attention fp32"].count("Attention") == 4 and "QAttention" not in ops["attention fp32"]
    assert any(op in ("MatMulInteger", "DynamicQuantizeMatMul") for op in ops["attention fp32"])
