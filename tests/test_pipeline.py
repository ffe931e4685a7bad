"""The run directory contract: stages chain, skip when complete, recompute when inputs change, resume after a kill."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
import yaml

from distill.config import load_config
from distill.errors import GateError, StageError
from distill.pipeline import run_pipeline
from tests.conftest import start_run_until_checkpoint, write_sst2_like
from tests.test_cli_errors import run_cli


@pytest.fixture
def sst2_like(tmp_path) -> tuple[Path, Path]:
    """Enough rows for the tiny teacher to learn the task in a few seconds."""
    return write_sst2_like(tmp_path / "data" / "train.tsv", 400, seed=1), write_sst2_like(
        tmp_path / "data" / "dev.tsv", 64, seed=2
    )


def write_config(tmp_path: Path, teacher_dir: Path, train: Path, dev: Path, **student_training) -> Path:
    training = {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "save_steps": 5, "logging_steps": 5}
    training.update(student_training)
    config = {
        "task": "sst2",
        "data": {"train": str(train), "validation": str(dev), "max_length": 32},
        "teacher": {
            "source": str(teacher_dir),
            "min_margin": 0.0,
            "training": {"epochs": 4, "batch_size": 16, "learning_rate": 1e-3, "save_steps": 50},
        },
        # augmentation off: this test follows the hidden-state term, which augmented data switches off
        "students": [{"name": "s2", "num_layers": 2, "training": training, "augmentation": {"enabled": False}}],
        "bench": {"batch_sizes": [1], "seq_lengths": [16], "iterations": 5, "warmup": 1, "replay_batch_sizes": [8]},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def test_full_run_then_rerun_skips_and_change_recomputes(tmp_path, tiny_encoder_dir, sst2_like, capsys):
    config_path = write_config(tmp_path, tiny_encoder_dir, *sst2_like, learning_rate=None)  # the one value chosen
    run_dir = tmp_path / "run"
    run_pipeline(load_config(config_path), run_dir)

    for relative in (
        "config.yaml",
        "manifest.json",
        "teacher/eval.json",
        "teacher/model.safetensors",
        "students/s2/eval.json",
        "students/s2/distill.json",
        "students/s2/model.safetensors",
        "onnx/teacher/model.onnx",
        "onnx/s2/model.onnx",
        "onnx/s2/fidelity.json",
        "onnx/s2/README.md",
        "bench/results.json",
        "report.md",
    ):
        assert (run_dir / relative).is_file(), relative
    assert not (run_dir / "students" / "s2" / "checkpoints").exists(), (
        "checkpoints are removed once the stage completes"
    )
    stages = manifest(run_dir)["stages"]
    assert set(stages) == {"teacher", "student:s2", "export", "bench", "report"}
    assert all(entry["status"] == "complete" for entry in stages.values())
    assert stages["teacher"]["environment"]["versions"]["torch"]
    teacher_eval = json.loads((run_dir / "teacher" / "eval.json").read_text())
    assert teacher_eval["finetuned_here"] is True
    assert teacher_eval["metrics"]["accuracy"] > teacher_eval["baseline"]["metrics"]["accuracy"]
    distill_record = json.loads((run_dir / "students" / "s2" / "distill.json").read_text())
    assert distill_record["layer_map"] == [1, 3]
    assert any("loss_kd" in row and "loss_cos" in row for row in distill_record["history"])

    capsys.readouterr()
    finished = {key: entry["finished"] for key, entry in stages.items()}
    run_pipeline(load_config(config_path), run_dir)
    out = capsys.readouterr().out
    assert out.count("skipped") == 5
    assert {key: entry["finished"] for key, entry in manifest(run_dir)["stages"].items()} == finished

    budget = manifest(run_dir)["budget"]
    assert budget and "Training budgets" in (run_dir / "report.md").read_text(encoding="utf-8")
    (run_dir / "report.md").unlink()
    # the run's own config.yaml writes out every chosen value: nothing is chosen again, the recorded lines stay
    run_pipeline(load_config(run_dir / "config.yaml"), run_dir, stages=("report",))
    assert "[report] outputs missing from the run directory: recomputing" in capsys.readouterr().out
    assert manifest(run_dir)["budget"] == budget
    assert all(f"- {line}" in (run_dir / "report.md").read_text(encoding="utf-8") for line in budget)

    run_pipeline(
        load_config(config_path, ["bench.iterations=6"]), run_dir, stages=("teacher", "train", "export", "bench")
    )
    after = manifest(run_dir)["stages"]
    assert after["student:s2"]["finished"] == finished["student:s2"], "an unchanged upstream stage is not rerun"
    assert after["bench"]["finished"] != finished["bench"], "a changed stage is recomputed"
    with pytest.raises(StageError, match="different config"):
        run_pipeline(load_config(config_path), run_dir, stages=("report",))

    gated = load_config(config_path, ["bench.iterations=6", "bench.gates.min_speedup=1000"])
    with pytest.raises(GateError, match="min_speedup=1000"):
        run_pipeline(gated, run_dir, stages=("bench",))
    assert manifest(run_dir)["stages"]["bench"]["finished"] == after["bench"]["finished"], "gates do not re-measure"


def test_stage_before_its_upstream_is_refused(tmp_path, tiny_encoder_dir, sst2_like):
    config_path = write_config(tmp_path, tiny_encoder_dir, *sst2_like)
    with pytest.raises(StageError, match="distill teacher"):
        run_pipeline(load_config(config_path), tmp_path / "run", stages=("train",))
    assert not (tmp_path / "run").exists(), "a failed first stage leaves no run directory"


def test_training_killed_mid_run_resumes_from_checkpoint(tmp_path, tiny_encoder_dir, sst2_like):
    config_path = write_config(tmp_path, tiny_encoder_dir, *sst2_like, epochs=8)
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "distill", "run", str(config_path), "--run-dir", str(run_dir)]
    process = start_run_until_checkpoint(command, run_dir / "students" / "s2" / "checkpoints")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert manifest(run_dir)["stages"]["student:s2"]["status"] == "running"
    assert not (run_dir / "students" / "s2" / "eval.json").exists()

    result = run_cli(*command[3:], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[teacher] complete, inputs unchanged: skipped" in result.stdout
    assert "[student:s2] resuming an interrupted run" in result.stdout
    record = json.loads((run_dir / "students" / "s2" / "distill.json").read_text())
    assert record["resumed_from"] and "checkpoint-" in record["resumed_from"]
    assert manifest(run_dir)["stages"]["report"]["status"] == "complete"


def test_resume_skips_a_checkpoint_cut_short_by_a_kill(tmp_path):
    from distill.train import last_complete_checkpoint

    checkpoints = tmp_path / "checkpoints"
    assert last_complete_checkpoint(checkpoints) is None
    import torch
    from safetensors.torch import save_file

    (checkpoints / "checkpoint-5").mkdir(parents=True)
    (checkpoints / "checkpoint-5" / "trainer_state.json").write_text('{"global_step": 5}')
    save_file({"weight": torch.zeros(4)}, str(checkpoints / "checkpoint-5" / "model.safetensors"))
    (checkpoints / "checkpoint-10").mkdir()
    (checkpoints / "checkpoint-10" / "model.safetensors").write_text("partial")
    (checkpoints / "checkpoint-15").mkdir()
    (checkpoints / "checkpoint-15" / "trainer_state.json").write_text('{"global_st')
    assert last_complete_checkpoint(checkpoints) == str(checkpoints / "checkpoint-5")
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-5"]
