"""CI gates on the deployed student artifact, computed from a results dict with known numbers."""

from __future__ import annotations

from distill.config import GateConfig
from distill.gates import gate_failures
from distill.records import BenchResults


def results() -> BenchResults:
    def artifact(name, role, runtime, precision, accuracy, size):
        return {
            "name": name,
            "role": role,
            "runtime": runtime,
            "precision": precision,
            "size_bytes": size,
            "parameters": 0,
            "metrics": {"accuracy": accuracy},
        }

    def point(name, runtime, precision, p50, seq=128):
        return {"name": name, "runtime": runtime, "precision": precision, "batch": 1, "seq": seq, "p50_ms": p50}

    return BenchResults.model_validate(
        {
            "host": {},
            "metric_names": ["accuracy"],
            "artifacts": [
                artifact("teacher", "teacher", "pytorch", "fp32", 0.90, 100),
                artifact("s3", "student", "pytorch", "fp32", 0.89, 70),
                artifact("s3", "student", "onnxruntime", "fp32", 0.89, 70),
                artifact("s3", "student", "onnxruntime", "int8", 0.88, 25),
            ],
            "latency": [
                point("teacher", "pytorch", "fp32", 40.0),
                point("teacher", "pytorch", "fp32", 10.0, seq=32),
                point("s3", "onnxruntime", "fp32", 16.0),
                point("s3", "onnxruntime", "int8", 8.0),
            ],
        }
    )


def test_no_gates_configured_means_no_failures():
    assert gate_failures(results(), GateConfig()) == []


def test_gates_judge_the_int8_file_at_the_longest_sequence():
    passing = GateConfig(max_accuracy_drop=0.02 + 1e-9, min_speedup=5.0, max_size_ratio=0.25)
    assert gate_failures(results(), passing) == []  # drop 0.02, speed-up 40/8 = 5x, size 25/100


def test_each_failing_gate_is_named_with_its_value_and_setting():
    failures = gate_failures(results(), GateConfig(max_accuracy_drop=0.01, min_speedup=6.0, max_size_ratio=0.2))
    assert len(failures) == 3
    assert "loses 0.0200 accuracy" in failures[0] and "max_accuracy_drop=0.01" in failures[0]
    assert "5.00x faster" in failures[1] and "min_speedup=6.0" in failures[1]
    assert "0.25x the teacher's size" in failures[2] and "max_size_ratio=0.2" in failures[2]
