"""Every task in its own terms: GLUE's main metric per preset, the trivial baseline of every metric and the teacher's
gate on it, standard errors from the dev set's size and metric, and plots named by the main metric."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest

from distill.baseline import trivial_baseline
from distill.config import DataConfig
from distill.data import TaskData, load_task_data
from distill.metrics import approximate_standard_error, metric_name
from distill.records import TeacherEval
from distill.report import plots, write_report
from distill.report.results import RunView
from distill.report.statistics import bootstrap_interval, bootstrap_standard_error
from distill.tasks import GLUE_TASKS
from distill.teacher import gate
from tests.test_report import write_run


def task(train_labels: list, dev_labels: list, label_names: list[str] | None, metrics: list[str]) -> TaskData:
    def split(labels: list) -> datasets.Dataset:
        return datasets.Dataset.from_dict({"text": [f"text {i}" for i in range(len(labels))], "label": labels})

    return TaskData(split(train_labels), split(dev_labels), label_names, metrics)


def teacher(metrics: dict[str, float], data: TaskData, **fields) -> TeacherEval:
    return TeacherEval(source="test", finetuned_here=True, metrics=metrics, main_metric=data.main_metric, **fields)


# --- main metrics -----------------------------------------------------------------------------------------------


def test_mrpc_and_qqp_rank_f1_first_as_glue_does(tmp_path):
    assert GLUE_TASKS["mrpc"].metrics == ("f1", "accuracy") and GLUE_TASKS["qqp"].metrics == ("f1", "accuracy")
    assert GLUE_TASKS["cola"].metrics[0] == "matthews" and GLUE_TASKS["stsb"].metrics[0] == "pearson"
    rows = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    rows += [f"{i % 2}\t{i}\t{i + 100}\tthe film was good\tit was a good film" for i in range(6)]
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    data = load_task_data(DataConfig(train=tmp_path / "train.tsv", validation=tmp_path / "dev.tsv"), "mrpc")
    assert data.main_metric == "f1" and data.metrics == ["f1", "accuracy"] and data.has_pair


def test_metric_names_for_people():
    assert [metric_name(m) for m in ("accuracy", "f1", "matthews", "pearson")] == ["accuracy", "F1", "MCC", "Pearson"]


# --- trivial baselines and the gate ------------------------------------------------------------------------------


def test_the_majority_class_scores_f1_in_its_own_terms():
    # MRPC-like: 68% of dev pairs are paraphrases; always answering "equivalent" scores F1 0.81, not 0
    data = task([1] * 7 + [0] * 3, [1] * 68 + [0] * 32, ["not_equivalent", "equivalent"], ["f1", "accuracy"])
    baseline = trivial_baseline(data)
    assert baseline.label == "equivalent" and baseline.mean is None
    assert baseline.metrics == {"f1": pytest.approx(2 * 0.68 / 1.68), "accuracy": pytest.approx(0.68)}

    # a negative majority predicts no positive at all: binary F1 0, Matthews 0
    negative = task([0] * 7 + [1] * 3, [1] * 40 + [0] * 60, ["no", "yes"], ["f1", "matthews", "accuracy"])
    assert trivial_baseline(negative).metrics == {"f1": 0.0, "matthews": 0.0, "accuracy": pytest.approx(0.6)}


def test_the_gate_compares_the_main_metric_with_its_own_baseline():
    data = task([1] * 7 + [0] * 3, [1] * 68 + [0] * 32, ["not_equivalent", "equivalent"], ["f1", "accuracy"])
    baseline = trivial_baseline(data)
    record = teacher({"f1": 0.85, "accuracy": 0.80}, data, baseline=baseline)  # 18 points over accuracy's 0.68
    refusal = gate(record, 0.05)
    assert refusal is not None
    assert "dev f1 is 0.8500, not better than the trivial baseline's 0.8095 (always `equivalent`)" in refusal
    assert gate(teacher({"f1": 0.87, "accuracy": 0.82}, data, baseline=baseline), 0.05) is None
    assert "trivial baseline 0.8095, always `equivalent`" in record.line()


def test_regression_has_a_mean_score_baseline_and_a_real_gate():
    train, dev = [1.0, 2.0, 3.0, 4.0], [0.0, 2.5, 5.0]
    data = task(train, dev, None, ["pearson", "spearman"])
    baseline = trivial_baseline(data)
    assert baseline.mean == 2.5 and baseline.label is None
    assert baseline.metrics == {"pearson": 0.0, "spearman": 0.0}
    assert baseline.mse == pytest.approx(np.mean((np.array(dev) - 2.5) ** 2))
    assert baseline.answer() == "always 2.5, the training mean"

    weak = teacher({"pearson": 0.03, "spearman": 0.02}, data, baseline=baseline)
    refusal = gate(weak, 0.05)
    assert refusal is not None and "pearson is 0.0300, not better than the trivial baseline's 0.0000" in refusal
    assert gate(teacher({"pearson": 0.5, "spearman": 0.4}, data, baseline=baseline), 0.05) is None
    saved = TeacherEval.model_validate(json.loads(json.dumps(weak.model_dump(mode="json"))))
    assert saved.trivial() == baseline and gate(saved, 0.05) == refusal


def test_a_teacher_record_from_before_trivial_baselines_still_gates():
    data = task([1, 1, 0], [1, 0], ["negative", "positive"], ["accuracy"])
    old = teacher({"accuracy": 0.52}, data, majority_baseline={"label": "positive", "accuracy": 0.509})
    assert old.trivial() is not None and old.trivial().metrics == {"accuracy": 0.509}
    assert "trivial baseline's 0.5090 (always `positive`)" in gate(old, 0.05)
    regression = teacher({"pearson": 0.03}, task([1.0], [1.0], None, ["pearson"]))
    assert regression.trivial() is None and "baseline's 0.0000 by" in gate(regression, 0.05)


# --- standard errors ----------------------------------------------------------------------------------------------


def test_standard_errors_from_the_dev_size_and_metric():
    assert approximate_standard_error("accuracy", 0.88, 872) == pytest.approx(np.sqrt(0.88 * 0.12 / 872))
    assert approximate_standard_error("pearson", 0.8, 1503) == pytest.approx(0.36 / np.sqrt(1500))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 872)
    predictions = np.where(rng.random(872) < 0.88, labels, 1 - labels)
    accuracy = float(np.mean(predictions == labels))
    bootstrapped = bootstrap_standard_error(predictions, labels, "accuracy", resamples=1000)
    assert bootstrapped == pytest.approx(approximate_standard_error("accuracy", accuracy, 872), rel=0.1)
    interval = bootstrap_interval(predictions, labels, "f1", resamples=200)
    assert interval.low < interval.estimate < interval.high


def test_the_report_states_noise_in_the_tasks_own_terms(tmp_path: Path):
    write_run(tmp_path, student_p50=5.0)
    path = tmp_path / "teacher" / "eval.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "dev_examples": 872}))
    (tmp_path / "onnx" / "small" / "model.onnx").write_bytes(b"")  # a bundle holding a model gets a model card
    (tmp_path / "students" / "small" / "distill.json").write_text(json.dumps({"description": [], "seed": 0}))
    report = write_report(tmp_path).read_text()
    assert "SST-2" not in report
    # 0.92 on 872 examples: sqrt(0.92 * 0.08 / 872) = 0.92 points, two of them 1.8
    sentence = (
        "a gain under about 1.8 points (two standard errors of one model's dev accuracy on these 872 examples, "
        "approximated from the teacher's score) cannot be told from noise"
    )
    assert sentence in report

    statistics = {"metric": "accuracy", "dev_examples": 500, "bootstrap_resamples": 10, "students": {}}
    statistics["teacher"] = {"metrics": {"accuracy": 0.92}, "standard_error": {"accuracy": 0.012}}
    (tmp_path / "statistics.json").write_text(json.dumps(statistics))
    report = write_report(tmp_path).read_text()
    assert "under about 2.4 points (two standard errors of one model's dev accuracy on these 500 examples, " in report
    assert "bootstrapped from the teacher's predictions" in report
    card = tmp_path / "onnx" / "small" / "README.md"
    assert "on these 500 dev examples one model's accuracy has a standard error near 1.2 points" in card.read_text()


def test_plots_are_titled_by_the_main_metric(tmp_path: Path, monkeypatch):
    write_run(tmp_path, student_p50=5.0)
    results = tmp_path / "bench" / "results.json"
    raw = json.loads(results.read_text())
    for row in raw["artifacts"]:
        row["metrics"] = {"matthews": row["metrics"]["accuracy"]}
    results.write_text(json.dumps({**raw, "metric_names": ["matthews"]}))
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, path: figures.append(figure))
    plots.plot_accuracy_vs_latency(RunView.load(tmp_path), tmp_path / "plot.png")
    axes = figures[0].axes[0]
    assert axes.get_title().startswith("MCC vs latency") and axes.get_ylabel() == "dev MCC"
