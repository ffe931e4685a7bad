"""ONNX export: the bundle it writes, its fidelity record, and the failures that must leave nothing behind."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
from transformers import AutoTokenizer

import distill.export
from distill.config import ExportConfig
from distill.errors import ExportError
from distill.evaluate import predict_logits
from distill.export import export_onnx, input_names, load_model, random_inputs
from distill.files import read_json
from distill.runtime import create_session, onnx_logits
from tests.conftest import tokenised_dev

QUICK = ExportConfig(check_shapes=[(1, 16), (4, 24)])


@pytest.fixture(scope="module")
def validation(tiny_bert_dir: Path, tmp_path_factory) -> datasets.Dataset:
    """A tokenised 24-example SST-2-like dev split."""
    return tokenised_dev(tmp_path_factory.mktemp("export_data"), tiny_bert_dir, 24)


def test_export_round_trip(tiny_bert_dir: Path, validation: datasets.Dataset, tmp_path: Path) -> None:
    model = load_model(tiny_bert_dir)
    teacher_logits = predict_logits(model, validation, AutoTokenizer.from_pretrained(tiny_bert_dir))
    out_dir = tmp_path / "onnx" / "tiny"
    fidelity = export_onnx(tiny_bert_dir, out_dir, QUICK, validation, teacher_logits=teacher_logits)

    for name in (
        "model.onnx",
        "tokenizer.json",
        "tokenizer_config.json",
        "config.json",
        "fidelity.json",
        "dev_logits.npy",
    ):
        assert (out_dir / name).is_file(), name
    assert read_json(out_dir / "fidelity.json") == fidelity
    assert fidelity["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert fidelity["opset"] == 17 and fidelity["size_bytes"] == (out_dir / "model.onnx").stat().st_size
    assert [(c["batch"], c["seq"]) for c in fidelity["check_shapes"]] == [(1, 16), (4, 24)]
    assert all(c["max_abs_diff"] < 1e-4 for c in fidelity["check_shapes"])
    assert fidelity["dev_examples"] == len(validation) and fidelity["max_abs_diff"] < 1e-4
    assert fidelity["prediction_flips"] == 0 and fidelity["flip_rate"] == 0.0
    assert fidelity["agreement_with_pytorch"] == 1.0 and fidelity["agreement_with_teacher"] == 1.0
    assert fidelity["op_counts"]["MatMul"] >= 4 * 6  # q, k, v, output and two FFN projections per layer
    np.testing.assert_allclose(np.load(out_dir / "dev_logits.npy"), teacher_logits, atol=1e-4)
    assert not [p for p in out_dir.parent.iterdir() if p.name.startswith(".")], "staging directory left behind"

    # Dynamic axes: a batch and length that were neither traced nor checked.
    inputs = random_inputs(model, input_names(model), batch=3, seq=23, seed=7)
    encodings = [{name: tensor[row].tolist() for name, tensor in inputs.items()} for row in range(3)]
    session = create_session(out_dir / "model.onnx", threads=1)
    expected = model(**inputs).logits.detach().numpy()
    np.testing.assert_allclose(onnx_logits(session, encodings), expected, atol=1e-4)


def test_shape_mismatch_raises_and_leaves_nothing(
    tiny_bert_dir: Path, validation: datasets.Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = distill.export.onnx_logits
    monkeypatch.setattr(distill.export, "onnx_logits", lambda *args, **kwargs: real(*args, **kwargs) + 1e-2)
    out_dir = tmp_path / "onnx" / "tiny"
    with pytest.raises(ExportError, match=r"by 0\.01 at shape \(batch=1, seq=16\), more than export\.atol=0\.0001"):
        export_onnx(tiny_bert_dir, out_dir, QUICK, validation)
    assert list(out_dir.parent.iterdir()) == []


def test_dev_flip_raises_and_keeps_previous_bundle(
    tiny_bert_dir: Path, validation: datasets.Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out_dir = tmp_path / "onnx" / "tiny"
    out_dir.mkdir(parents=True)
    (out_dir / "model.onnx").write_text("previous bundle")
    real = distill.export.onnx_logits

    def swap_on_dev(session, encodings, *args, **kwargs):
        logits = real(session, encodings, *args, **kwargs)
        return logits[:, ::-1].copy() if len(encodings) == len(validation) else logits

    monkeypatch.setattr(distill.export, "onnx_logits", swap_on_dev)
    with pytest.raises(ExportError, match=f"{len(validation)} of {len(validation)} dev predictions differ"):
        export_onnx(tiny_bert_dir, out_dir, ExportConfig(atol=100.0, check_shapes=[(1, 8)]), validation)
    with pytest.raises(ExportError, match="on the dev split, more than export.atol=0.0001"):
        export_onnx(tiny_bert_dir, out_dir, ExportConfig(check_shapes=[(1, 8)]), validation)
    assert sorted(p.name for p in out_dir.parent.iterdir()) == ["tiny"]
    assert (out_dir / "model.onnx").read_text() == "previous bundle"


def test_missing_model_dir_is_an_export_error(validation: datasets.Dataset, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="cannot load a sequence-classification model"):
        export_onnx(tmp_path / "nowhere", tmp_path / "out", QUICK, validation)
    assert not (tmp_path / "out").exists()


def test_teacher_logits_of_the_wrong_shape(tiny_bert_dir: Path, validation: datasets.Dataset, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="teacher logits have shape"):
        export_onnx(tiny_bert_dir, tmp_path / "out", QUICK, validation, teacher_logits=np.zeros((3, 2)))
    assert not (tmp_path / "out").exists()


def test_check_shape_longer_than_the_model(tiny_bert_dir: Path, validation: datasets.Dataset, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="asks for seq 129 but the model takes at most 128 tokens"):
        export_onnx(tiny_bert_dir, tmp_path / "out", ExportConfig(check_shapes=[(1, 129)]), validation)
    assert not (tmp_path / "out").exists()
