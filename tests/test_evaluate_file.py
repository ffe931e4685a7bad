"""`distill evaluate` on a finished run and on a lone bundle, its refusal of a file with other labels, and `distill
predict` on regression and pair bundles (tiny random BERTs exported to ONNX; seconds)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from transformers import AutoTokenizer

from distill.cli import cli
from distill.config import DataConfig, ExportConfig
from distill.data import load_task_data, tokenize
from distill.errors import ConfigError, DataError
from distill.evaluate_file import evaluate_file
from distill.export import export_onnx
from distill.runtime import TEXT_PAIR_KEY, OnnxClassifier
from tests.conftest import make_tiny_bert, write_sst2_like
from tests.test_cli_errors import assert_clean_failure, run_cli, write_config

EXPORT = ExportConfig(check_shapes=[(1, 8)])
NAMES = {"0": "negative", "1": "positive"}


def export(model_dir: Path, bundle: Path, validation, pair: bool = False) -> Path:
    """``model_dir`` exported to ``bundle`` as the export stage leaves it (task label names, the pair flag)."""
    export_onnx(model_dir, bundle, EXPORT, validation)
    config = json.loads((bundle / "config.json").read_text())
    if len(config.get("id2label", NAMES)) > 1:
        config["id2label"] = NAMES
    (bundle / "config.json").write_text(json.dumps({**config, TEXT_PAIR_KEY: pair}))
    return bundle


@pytest.fixture(scope="module")
def finished_run(tiny_bert_dir: Path, tmp_path_factory) -> Path:
    """A run directory as `distill run` leaves it, for what evaluate reads: config.yaml, teacher/ and three bundles
    (the teacher, a student and its twin)."""
    root = tmp_path_factory.mktemp("evaluate")
    train, dev = (
        write_sst2_like(root / "data" / "train.tsv", 16, seed=1),
        write_sst2_like(root / "data" / "dev.tsv", 12),
    )
    run = root / "run"
    run.mkdir()
    shutil.copy(write_config(root, train, dev, tiny_bert_dir), run / "config.yaml")
    shutil.copytree(tiny_bert_dir, run / "teacher")
    validation = tokenize(load_task_data(DataConfig(train=train, validation=dev), "sst2").validation,
                          AutoTokenizer.from_pretrained(tiny_bert_dir), 16)  # fmt: skip
    export(tiny_bert_dir, run / "onnx" / "teacher", validation)
    for name, seed in (("small", 1), ("small-twin", 2)):
        export(make_tiny_bert(root / name, num_layers=1, seed=seed), run / "onnx" / name, validation)
    return run


def test_evaluate_a_finished_run_scores_every_artifact_against_the_teacher(finished_run: Path, tmp_path: Path):
    new_file = write_sst2_like(tmp_path / "new.tsv", 40, seed=7)
    json_path, markdown_path = evaluate_file(finished_run, new_file, resamples=200)
    assert json_path == finished_run / "evaluations" / "new" / "evaluation.json"
    result = json.loads(json_path.read_text())
    assert result["examples"] == 40 and result["labels"] == ["negative", "positive"]
    assert result["metric_names"] == ["accuracy"] and result["reference"] == "teacher (pytorch, fp32)"
    rows = {(row["name"], row["runtime"]): row for row in result["artifacts"]}
    assert list(rows) == [("teacher", "pytorch"), ("teacher", "onnxruntime"), ("small", "onnxruntime"),
                          ("small-twin", "onnxruntime")]  # fmt: skip
    assert rows["teacher", "onnxruntime"]["agreement_with_teacher"] == 1.0
    assert rows["teacher", "onnxruntime"]["vs_teacher"]["estimate"] == 0.0
    small, twin = rows["small", "onnxruntime"], rows["small-twin", "onnxruntime"]
    gain = small["gain_over_twin"]
    assert gain["twin"] == "small-twin" and gain["low"] <= gain["estimate"] <= gain["high"]
    assert gain["estimate"] == pytest.approx(small["metrics"]["accuracy"] - twin["metrics"]["accuracy"])
    assert small["interval"]["low"] <= small["metrics"]["accuracy"] <= small["interval"]["high"]

    labels = np.array([int(line.rsplit("\t", 1)[1]) for line in new_file.read_text().splitlines()[1:]])
    texts = [line.rsplit("\t", 1)[0] for line in new_file.read_text().splitlines()[1:]]
    predicted = [p["label"] for p in OnnxClassifier(finished_run / "onnx" / "small").predict(texts)]
    assert small["metrics"]["accuracy"] == pytest.approx(
        np.mean(np.array(predicted) == np.array(["negative", "positive"])[labels])
    )
    markdown = markdown_path.read_text()
    assert "| small | student | onnxruntime | fp32 |" in markdown and "vs its twin `small-twin`" in markdown


def test_evaluate_a_lone_bundle_on_a_csv_with_label_names(finished_run: Path, tmp_path: Path):
    bundle = shutil.copytree(finished_run / "onnx" / "small", tmp_path / "small")
    rows = ["text,label", '"good, fun film",positive', "awful and dull,negative", "a happy story,positive"]
    new_file = tmp_path / "reviews.csv"
    new_file.write_text("\n".join(rows) + "\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["evaluate", str(bundle), str(new_file)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "evaluations" / "reviews-small"
    assert f"wrote {out / 'evaluation.md'}" in result.output and "| small | bundle |" in result.output
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["reference"] is None and evaluation["examples"] == 3
    assert "agreement_with_teacher" not in evaluation["artifacts"][0]


def test_evaluate_refuses_a_file_with_other_labels_in_one_sentence(finished_run: Path, tmp_path: Path):
    new_file = tmp_path / "three.csv"
    new_file.write_text("text,label\ngood film,positive\nfine film,neutral\nbad film,negative\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"has label\(s\) 'neutral' that .* does not know \(its labels are "):
        evaluate_file(finished_run / "onnx" / "small", new_file)
    result = run_cli("evaluate", finished_run / "onnx" / "small", new_file, cwd=tmp_path)
    lines = assert_clean_failure(result, "'neutral'", "['negative', 'positive']")
    assert len(lines) == 1 and not (tmp_path / "evaluations").exists()


@pytest.fixture(scope="module")
def regression_bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("regression")
    model = make_tiny_bert(root / "model", num_labels=1)
    rows = "text,score\n" + "".join(f"{text},{score}\n" for text, score in (("good film", 4.5), ("bad plot", 1.0)))
    (root / "data.csv").write_text(rows, encoding="utf-8")
    splits = DataConfig(train=root / "data.csv", validation=root / "data.csv", text_column="text", label_column="score")
    validation = tokenize(load_task_data(splits, None).validation, AutoTokenizer.from_pretrained(model), 16)
    return export(model, root / "bundle", validation)


def test_predict_prints_a_score_for_a_regression_model(regression_bundle: Path):
    result = CliRunner().invoke(cli, ["predict", str(regression_bundle), "good film"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert set(answer) == {"text", "score"} and isinstance(answer["score"], float)


def test_evaluate_a_regression_bundle_in_correlations(regression_bundle: Path, tmp_path: Path):
    scores = tmp_path / "scores.jsonl"
    lines = [
        {"text": f"{a} {b} film", "label": float(i)} for i, (a, b) in enumerate(zip("abcdef", "ghijkl", strict=True))
    ]
    scores.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    json_path, _ = evaluate_file(regression_bundle, scores, out=tmp_path / "out", resamples=100)
    evaluation = json.loads(json_path.read_text())
    assert evaluation["labels"] is None and evaluation["metric_names"] == ["pearson", "spearman"]
    assert -1.0 <= evaluation["artifacts"][0]["metrics"]["pearson"] <= 1.0


def test_predict_refuses_one_text_for_a_pair_model_in_one_sentence(finished_run: Path, tmp_path: Path):
    bundle = shutil.copytree(finished_run / "onnx" / "small", tmp_path / "pairs")
    config = json.loads((bundle / "config.json").read_text())
    (bundle / "config.json").write_text(json.dumps({**config, TEXT_PAIR_KEY: True}))
    result = CliRunner().invoke(cli, ["predict", str(bundle), "is it good?"])
    assert isinstance(result.exception, ConfigError)
    message = str(result.exception)
    assert message.startswith("this model classifies sentence pairs; give the second text of each pair")
    assert message.count(". ") == 0 and "\n" not in message
    assert CliRunner().invoke(cli, ["predict", str(bundle), "is it good?", "--pair", "yes"]).exit_code == 0
