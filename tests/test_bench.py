"""Benchmark: artifact rows, latency rows on a tiny grid, the timing protocol, and its input checks."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest

from distill.bench import Artifact, benchmark_artifacts, host_info, library_versions, time_point
from distill.config import BenchConfig, ExportConfig
from distill.errors import ConfigError, StageError
from distill.export import export_onnx
from distill.files import read_json
from tests.conftest import make_tiny_bert, tokenised_dev

GRID = BenchConfig(batch_sizes=[1, 2], seq_lengths=[8, 16], threads=1, warmup=1, iterations=5)


@pytest.fixture(scope="module")
def validation(tiny_bert_dir: Path, tmp_path_factory) -> datasets.Dataset:
    return tokenised_dev(tmp_path_factory.mktemp("bench_data"), tiny_bert_dir, 20)


@pytest.fixture(scope="module")
def artifacts(tiny_bert_dir: Path, validation: datasets.Dataset, tmp_path_factory) -> list[Artifact]:
    """A student listed before the teacher (the bench must reorder), and the student's ONNX export."""
    run_dir = tmp_path_factory.mktemp("bench_run")
    student_dir = make_tiny_bert(run_dir / "students" / "small", num_layers=2, seed=1)
    export_onnx(student_dir, run_dir / "onnx" / "small", ExportConfig(check_shapes=[(1, 8)]), validation)
    return [
        Artifact("small", "pytorch", "fp32", student_dir, "student"),
        Artifact("teacher", "pytorch", "fp32", tiny_bert_dir, "teacher"),
        Artifact("small", "onnxruntime", "fp32", run_dir / "onnx" / "small" / "model.onnx", "student"),
    ]


def test_benchmark_rows(artifacts: list[Artifact], validation: datasets.Dataset, tmp_path: Path) -> None:
    out_path = tmp_path / "bench" / "results.json"
    results = benchmark_artifacts(artifacts, validation, ["accuracy", "f1"], "teacher", GRID, out_path)
    assert read_json(out_path) == results

    rows = {(row["name"], row["runtime"]): row for row in results["artifacts"]}
    assert [row["name"] for row in results["artifacts"]] == ["teacher", "small", "small"]
    teacher, student, student_onnx = rows["teacher", "pytorch"], rows["small", "pytorch"], rows["small", "onnxruntime"]
    assert teacher["agreement_with_teacher"] == 1.0
    assert set(teacher["metrics"]) == {"accuracy", "f1"} and 0.0 <= teacher["metrics"]["accuracy"] <= 1.0
    assert student_onnx["metrics"] == pytest.approx(student["metrics"])
    assert student_onnx["agreement_with_teacher"] == pytest.approx(student["agreement_with_teacher"])
    assert teacher["parameters"] > student["parameters"] == student_onnx["parameters"] > 0
    assert teacher["size_bytes"] == (artifacts[1].path / "model.safetensors").stat().st_size
    assert student_onnx["size_bytes"] == artifacts[2].path.stat().st_size
    assert student_onnx["path"] == str(artifacts[2].path)

    side = {(row["name"], row["runtime"], row["precision"]): row for row in results["side_by_side"]}
    assert set(side) == {(name, runtime, "fp32") for name, runtime in rows}, "every artifact timed side by side"
    assert all(row["batch"] == 1 and row["seq"] == 16 and row["p50_ms"] > 0 for row in side.values())

    latency = results["latency"]
    assert len(latency) == 3 * 2 * 2
    assert {(row["name"], row["runtime"], row["batch"], row["seq"]) for row in latency} == {
        (name, runtime, batch, seq) for name, runtime in rows for batch in (1, 2) for seq in (8, 16)
    }
    for row in latency:
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["iterations"] == 5 and row["threads"] == 1 and row["precision"] == "fp32"
        assert row["throughput_per_s"] == pytest.approx(row["batch"] * 1000.0 / row["mean_ms"])
    assert results["protocol"]["threads"] == 1 and results["protocol"]["iterations"] == 5
    assert results["metric_names"] == ["accuracy", "f1"] and results["teacher"] == "teacher"
    assert results["versions"]["torch"] and results["host"]["logical_cores"] >= 1


def test_time_point_respects_budget_but_runs_at_least_five() -> None:
    calls: list[int] = []
    feeds = {"input_ids": np.zeros((3, 4), dtype=np.int64)}
    cfg = BenchConfig(warmup=2, iterations=1000, max_seconds_per_point=1e-9)
    timing = time_point(lambda batch: calls.append(len(batch["input_ids"])), feeds, cfg)
    assert timing["iterations"] == 5 and len(calls) == 2 + 5
    assert timing["p50_ms"] <= timing["p90_ms"] <= timing["p99_ms"]
    assert time_point(lambda batch: None, feeds, BenchConfig(warmup=0, iterations=3))["iterations"] == 3


def test_missing_teacher_and_too_long_sequences(
    artifacts: list[Artifact], validation: datasets.Dataset, tmp_path: Path
) -> None:
    out_path = tmp_path / "results.json"
    with pytest.raises(StageError, match="no PyTorch artifact named 'bert-base'"):
        benchmark_artifacts(artifacts, validation, ["accuracy"], "bert-base", GRID, out_path)
    too_long = GRID.model_copy(update={"seq_lengths": [8, 512]})
    with pytest.raises(ConfigError, match="bench.seq_lengths has 512 but small takes at most 128 tokens"):
        benchmark_artifacts(artifacts, validation, ["accuracy"], "teacher", too_long, out_path)
    missing = [*artifacts, Artifact("gone", "onnxruntime", "fp32", tmp_path / "gone.onnx", "student")]
    with pytest.raises(StageError, match="artifact gone"):
        benchmark_artifacts(missing, validation, ["accuracy"], "teacher", GRID, out_path)
    assert not out_path.exists()


def test_host_and_versions() -> None:
    host = host_info()
    assert host["cpu"] and host["available_cores"] <= host["logical_cores"]
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file() and " avx2 " in cpuinfo.read_text():
        assert {"avx", "avx2"} <= set(host["cpu_flags"])
    versions = library_versions()
    assert {"python", "torch", "transformers", "onnxruntime", "onnx", "numpy"} <= set(versions)
    assert versions["onnxruntime"].count(".") >= 1


def test_replay_groups_sentences_of_similar_length() -> None:
    from distill.bench import replay_dev_set

    lengths = [3, 30, 4, 29, 5, 28, 6, 27]
    rows = [{"input_ids": [1] * length} for length in lengths]
    widths: list[tuple[int, int]] = []
    timing = replay_dev_set(lambda feeds: widths.append(feeds["input_ids"].shape), ["input_ids"], rows, batch=4)
    assert timing["sentences"] == 8 and sorted(widths) == [(4, 6), (4, 30)], "in file order each batch pads to 30"


def test_over_budget_int8_rows_are_flagged(
    artifacts: list[Artifact], validation: datasets.Dataset, tmp_path: Path
) -> None:
    onnx_path = artifacts[2].path
    flagged = Artifact("small", "onnxruntime", "int8-over-budget", onnx_path, "student", "over budget: 2.41% flips")
    one_point = GRID.model_copy(update={"batch_sizes": [1], "seq_lengths": [8], "replay_batch_sizes": []})
    results = benchmark_artifacts(
        [artifacts[1], flagged], validation, ["accuracy"], "teacher", one_point, tmp_path / "r"
    )
    rows = {row["precision"]: row for row in results["artifacts"] if row["runtime"] == "onnxruntime"}
    assert rows["int8-over-budget"]["over_budget"] == "over budget: 2.41% flips"
    assert "padding_atol" not in rows["int8-over-budget"]
    from distill.records import BenchResults

    assert BenchResults.model_validate(results).artifacts[1].over_budget == "over budget: 2.41% flips"


def test_stage_line_names_the_fastest_distilled_student_not_its_twin() -> None:
    from distill.bench import _fastest_line
    from distill.records import ArtifactRow, BenchResults, LatencyRow

    def key(name: str, role: str, precision: str) -> dict[str, str]:
        return {"name": name, "role": role, "precision": precision, "runtime": "onnxruntime"} | (
            {"runtime": "pytorch"} if role == "teacher" else {}
        )

    def row(name: str, role: str, precision: str, accuracy: float) -> ArtifactRow:
        return ArtifactRow(**key(name, role, precision), size_bytes=1, parameters=1, metrics={"accuracy": accuracy})

    def point(name: str, role: str, precision: str, p50: float) -> LatencyRow:
        return LatencyRow(**key(name, role, precision), batch=1, seq=128, p50_ms=p50)

    rows = [row("teacher", "teacher", "fp32", 0.86), row("distil3", "student", "int8", 0.84)]
    latency = [point("teacher", "teacher", "fp32", 14.0), point("distil3", "student", "int8", 2.8)]
    twin = ([row("distil3-twin", "student", "int8", 0.83)], [point("distil3-twin", "student", "int8", 2.7)])
    results = BenchResults(host={}, metric_names=["accuracy"], artifacts=rows + twin[0], latency=latency + twin[1])
    line = _fastest_line(results)
    assert "fastest student file distil3 (onnxruntime, int8): 5.00x" in line and "twin" not in line
    only_twin = BenchResults(
        host={}, metric_names=["accuracy"], artifacts=rows[:1] + twin[0], latency=latency[:1] + twin[1]
    )
    assert "distil3-twin (onnxruntime, int8): 5.19x" in _fastest_line(only_twin)
    side = [point("teacher", "teacher", "fp32", 21.0), point("distil3", "student", "int8", 3.0)]
    both = results.model_copy(update={"side_by_side": side})
    assert "distil3 (onnxruntime, int8): 7.00x the teacher's PyTorch speed at batch 1, sequence 128 (side by side)" in (
        _fastest_line(both)
    ), "the side-by-side timing, when it ran, gives the quoted ratio"


def test_report_quotes_side_by_side_ratios_against_the_teacher_and_its_int8() -> None:
    from types import SimpleNamespace

    from distill.records import ArtifactRow, BenchResults, LatencyRow
    from distill.report.latency import side_by_side_section

    def point(name: str, role: str, runtime: str, precision: str, p50: float) -> LatencyRow:
        return LatencyRow(name=name, role=role, runtime=runtime, precision=precision, batch=1, seq=128, p50_ms=p50)

    teacher = ArtifactRow(
        name="teacher", role="teacher", runtime="pytorch", precision="fp32", size_bytes=1, parameters=1, metrics={}
    )
    side = [
        point("teacher", "teacher", "pytorch", "fp32", 24.0),
        point("teacher", "teacher", "onnxruntime", "int8-over-budget", 8.0),
        point("distil3", "student", "onnxruntime", "int8", 4.0),
    ]
    results = BenchResults(host={}, metric_names=["accuracy"], artifacts=[teacher], side_by_side=side)
    lines = side_by_side_section(SimpleNamespace(results=results, teacher=teacher))
    assert lines[0] == "## Side by side (batch 1, sequence 128)"
    assert "| distil3 | onnxruntime | int8 | 4.00 | 6.00x | 2.00x |" in lines, lines
    assert lines.index("| distil3 | onnxruntime | int8 | 4.00 | 6.00x | 2.00x |") < lines.index(
        "| teacher | pytorch | fp32 | 24.00 | 1.00x | 0.33x |"
    ), "fastest first"
    older = BenchResults(host={}, metric_names=["accuracy"], artifacts=[teacher])
    assert side_by_side_section(SimpleNamespace(results=older, teacher=teacher)) == [], "runs from before: no section"
