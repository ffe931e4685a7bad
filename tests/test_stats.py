"""Intervals over seeds and the paired bootstrap, on synthetic predictions with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import t as student_t

from distill.records import StudentEval, TeacherEval
from distill.report.statistics import (
    Interval,
    headroom_reading,
    paired_bootstrap,
    run_statistics,
    seed_interval,
    statistics_section,
    verdict,
)


def test_seed_interval_by_hand():
    summary = seed_interval([0.80, 0.82, 0.84])
    assert summary.mean == pytest.approx(0.82)
    assert summary.std == pytest.approx(0.02)  # sample standard deviation
    half = student_t.ppf(0.975, 2) * 0.02 / np.sqrt(3)  # 4.303 * 0.01155 = 0.0497
    assert half == pytest.approx(0.0497, abs=1e-4)
    assert (summary.interval.low, summary.interval.high) == pytest.approx((0.82 - half, 0.82 + half))


def test_one_seed_has_no_spread():
    summary = seed_interval([0.9])
    assert summary.std == 0.0 and summary.interval.low == summary.interval.high == 0.9


def test_identical_systems_differ_by_exactly_zero():
    labels = np.random.default_rng(0).integers(0, 2, 500)
    predictions = np.random.default_rng(1).integers(0, 2, 500)
    interval = paired_bootstrap([predictions], [predictions.copy()], labels)
    assert interval.estimate == interval.low == interval.high == 0.0
    assert not interval.excludes_zero()


def test_a_clear_gain_is_detected_with_the_right_size():
    # A is right on 90% of 1000 examples, B on the same examples minus 50: a gain of exactly 5 points
    labels = np.zeros(1000, dtype=int)
    a = np.where(np.arange(1000) < 900, 0, 1)
    b = np.where(np.arange(1000) < 850, 0, 1)
    interval = paired_bootstrap([a], [b], labels, resamples=4000)
    assert interval.estimate == pytest.approx(0.05)
    assert interval.excludes_zero()
    # paired: the per-example difference is 1 on 50 examples, 0 elsewhere -> sd of the mean ~ sqrt(.05*.95/1000)
    assert interval.low == pytest.approx(0.05 - 1.96 * np.sqrt(0.05 * 0.95 / 1000), abs=0.006)
    assert interval.high == pytest.approx(0.05 + 1.96 * np.sqrt(0.05 * 0.95 / 1000), abs=0.006)


def test_noise_sized_difference_is_not_called_a_gain():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 872)
    a = np.where(rng.random(872) < 0.88, labels, 1 - labels)
    b = np.where(rng.random(872) < 0.88, labels, 1 - labels)  # independent, same true accuracy
    interval = paired_bootstrap([a], [b], labels)
    assert interval.low < 0 < interval.high


def test_seeds_are_averaged_before_comparing():
    labels = np.zeros(4, dtype=int)
    a = [np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1])]  # 75% and 50%: mean 62.5%
    b = [np.array([0, 1, 1, 1])]  # 25%
    assert paired_bootstrap(a, b, labels, resamples=10).estimate == pytest.approx(0.375)


def test_other_metrics_use_the_same_resamples():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 300)
    a = np.where(rng.random(300) < 0.9, labels, 1 - labels)
    interval = paired_bootstrap([a], [a], labels, metric="matthews", resamples=50)
    assert interval.estimate == interval.low == interval.high == 0.0


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="as long as labels"):
        paired_bootstrap([np.zeros(3)], [np.zeros(4)], np.zeros(3))


def test_verdicts_in_words():
    assert verdict("distillation", Interval(0.009, 0.003, 0.015)) == (
        "distillation gained +0.90 points (95% interval +0.30 to +1.50)"
    )
    assert verdict("distillation", Interval(-0.02, -0.03, -0.01)).startswith(
        "distillation lost 2.00 points (95% interval -3.00 to -1.00)"
    )
    assert verdict("distillation", Interval(0.002, -0.005, 0.009)) == (
        "no gain or loss from distillation detected: +0.20 points (95% interval -0.50 to +0.90, which includes zero)"
    )


def test_headroom_reading_tells_a_teacher_without_lead_from_a_recipe_that_fell_short():
    no_gain = Interval(0.009, -0.006, 0.024)
    no_lead = headroom_reading(no_gain, Interval(0.011, -0.007, 0.030))
    assert no_lead is not None and "not measurably better than the twin (+1.10 points" in no_lead
    assert "stronger teacher" in no_lead
    fell_short = headroom_reading(no_gain, Interval(0.030, 0.012, 0.048))
    assert fell_short is not None and "measurably better than the twin (+3.00 points" in fell_short
    assert "tune the distillation" in fell_short
    assert headroom_reading(Interval(0.02, 0.005, 0.035), Interval(0.03, 0.012, 0.048)) is None  # a gain: no excuse


def _write_model(directory: Path, predictions: np.ndarray, labels: np.ndarray, objective: str = "distill") -> None:
    directory.mkdir(parents=True)
    np.save(directory / "dev_logits.npy", np.eye(2)[predictions])  # logits whose argmax is the prediction
    metrics = {"accuracy": float(np.mean(predictions == labels))}
    if directory.name == "teacher":
        record = TeacherEval(source="test", finetuned_here=True, metrics=metrics, main_metric="accuracy")
    else:
        record = StudentEval(name=directory.name, objective=objective, metrics=metrics, main_metric="accuracy")
    record.save(directory / "eval.json")


@pytest.mark.parametrize(
    ("twin_right", "reading"),
    [
        ((20, 815), "not measurably better than the twin"),  # teacher alone right on 20, twin alone on 15
        ((100, 800), "passed on too little of its lead"),  # teacher alone right on 100, twin alone on none
    ],
)
def test_the_report_says_why_a_student_shows_no_gain(tmp_path, twin_right, reading):
    # 872 dev examples; the teacher is right on the first 800, the student on exactly the twin's examples
    labels = np.zeros(872, dtype=int)

    def right_on(start: int, stop: int) -> np.ndarray:
        return np.where((np.arange(872) >= start) & (np.arange(872) < stop), 0, 1)

    _write_model(tmp_path / "teacher", right_on(0, 800), labels)
    _write_model(tmp_path / "students" / "s", right_on(*twin_right), labels)
    _write_model(tmp_path / "students" / "s-twin", right_on(*twin_right), labels, objective="labels")
    statistics = run_statistics(tmp_path, labels, ["accuracy"], resamples=500)

    entry = statistics["students"]["s"]
    assert entry["teacher_over_twin"]["estimate"] == pytest.approx((800 - (twin_right[1] - twin_right[0])) / 872)
    assert reading in entry["teacher_over_twin"]["reading"]
    markdown = "\n".join(statistics_section(statistics))
    assert f"Why: {entry['teacher_over_twin']['reading']}." in markdown
    assert "teacher_over_twin" not in statistics["students"]["s-twin"]  # a twin has no twin of its own
