"""The torch-free ONNX Runtime predictor: imports, batching, padding, and agreement with PyTorch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distill.config import DataConfig, ExportConfig
from distill.data import load_task_data, tokenize
from distill.errors import ExportError
from distill.export import export_onnx
from distill.runtime import OnnxClassifier, create_session, length_sorted_batches, onnx_logits
from tests.conftest import REPO_ROOT, WORDS, write_sst2_like

TEXTS = [
    "good movie",
    "the plot was awful and the actor was dull but the film was very very fun",
    "it",
    "not bad at all , a really charming story",
    "boring",
]
PAIRS = ["great", "this is sad", "the worst film", "fine", "a happy and moving story of love"]


@pytest.fixture(scope="module")
def bundle(tiny_bert_dir: Path, tmp_path_factory) -> Path:
    """The tiny BERT exported by ``export_onnx``."""
    data_dir = tmp_path_factory.mktemp("runtime_data")
    splits = DataConfig(
        train=write_sst2_like(data_dir / "train.tsv", 16, seed=1),
        validation=write_sst2_like(data_dir / "dev.tsv", 12, seed=2),
    )
    validation = tokenize(load_task_data(splits, "sst2").validation, AutoTokenizer.from_pretrained(tiny_bert_dir), 32)
    out_dir = tmp_path_factory.mktemp("runtime_bundle") / "tiny"
    export_onnx(tiny_bert_dir, out_dir, ExportConfig(check_shapes=[(1, 8)]), validation)
    return out_dir


def pytorch_logits(model_dir: Path, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    batch = tokenizer(texts, pairs, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**batch).logits.numpy()


def test_runtime_imports_without_torch() -> None:
    code = (
        "import sys, distill.runtime; leaked = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers')); assert not leaked, leaked"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_length_sorted_batches_longest_first_and_complete() -> None:
    batches = length_sorted_batches([3, 9, 1, 9, 5], batch_size=2)
    assert batches == [[1, 3], [4, 0], [2]]
    assert length_sorted_batches([], batch_size=4) == []


def test_onnx_logits_keep_order_and_ignore_padding(bundle: Path, tiny_bert_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    session = create_session(bundle / "model.onnx", threads=1)
    encodings = [dict(tokenizer(text)) for text in TEXTS]
    batched = onnx_logits(session, encodings, batch_size=2)  # padded within length-sorted batches
    one_by_one = np.concatenate([onnx_logits(session, [encoding]) for encoding in encodings])
    assert batched.shape == (len(TEXTS), 2) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    np.testing.assert_allclose(batched, pytorch_logits(tiny_bert_dir, TEXTS), atol=1e-4)
    ids_only = [{"input_ids": encoding["input_ids"]} for encoding in encodings]  # mask and segments filled in
    np.testing.assert_allclose(onnx_logits(session, ids_only, batch_size=3), batched, atol=1e-5)
    assert onnx_logits(session, []).shape == (0, 2)


def test_classifier_matches_pytorch(bundle: Path, tiny_bert_dir: Path) -> None:
    classifier = OnnxClassifier(bundle, threads=1)
    hf_tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    for text, pair in zip(TEXTS, PAIRS, strict=True):
        runtime_encoding = classifier.tokenizer.encode(text, pair)
        assert runtime_encoding.ids == hf_tokenizer(text, pair)["input_ids"]
        assert runtime_encoding.type_ids == hf_tokenizer(text, pair)["token_type_ids"]
    id2label = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).config.id2label
    for pairs in (None, PAIRS):
        logits = pytorch_logits(tiny_bert_dir, TEXTS, pairs)
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
        predictions = classifier.predict(TEXTS, pairs)
        assert [p["label"] for p in predictions] == [id2label[int(k)] for k in logits.argmax(axis=-1)]
        np.testing.assert_allclose([p["score"] for p in predictions], probabilities.max(axis=-1), atol=1e-5)
    assert classifier.predict("good")[0]["label"] in id2label.values()


def test_classifier_truncates_long_texts(bundle: Path) -> None:
    classifier = OnnxClassifier(bundle)
    long_text = " ".join(WORDS * 10)  # far more tokens than the 128 positions of the tiny model
    assert len(classifier.tokenizer.encode(long_text).ids) == 128
    assert len(classifier.predict([long_text])) == 1


def test_classifier_reports_incomplete_bundle(bundle: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(bundle, tmp_path / "broken")
    (broken / "tokenizer.json").unlink()
    with pytest.raises(ExportError, match="no tokenizer.json"):
        OnnxClassifier(broken)
    with pytest.raises(ExportError, match="does not exist"):
        create_session(tmp_path / "missing.onnx", threads=1)
