"""A TinyBERT-style student and its label-only twin through the real pipeline on tiny data: outputs, logged
per-layer losses, projections kept out of the student, and resumption inside stage 1 and after it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distill import train as train_module
from distill.config import load_config
from distill.data import load_task_data, tokenize
from distill.evaluate import predict_logits
from distill.pipeline import run_pipeline
from distill.train import last_complete_checkpoint
from tests.conftest import tiny_tinybert_student, write_sst2_like

STAGE = {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "save_steps": 4, "logging_steps": 2}


@pytest.fixture
def config_path(tmp_path, tiny_encoder_dir) -> Path:
    train = write_sst2_like(tmp_path / "data" / "train.tsv", 400, seed=1)
    dev = write_sst2_like(tmp_path / "data" / "dev.tsv", 32, seed=2)
    config = {
        "task": "sst2",
        "data": {"train": str(train), "validation": str(dev), "max_length": 32},
        "teacher": {
            "source": str(tiny_encoder_dir),
            "min_margin": 0.0,
            "training": {"epochs": 4, "batch_size": 16, "learning_rate": 1e-3, "save_steps": 50},
        },
        "students": [tiny_tinybert_student(STAGE, {**STAGE, "epochs": 1})],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tinybert_student_and_twin(tmp_path, config_path):
    run_dir = tmp_path / "run"
    run_pipeline(load_config(config_path), run_dir, stages=("teacher", "train"))
    student, twin = run_dir / "students" / "tiny", run_dir / "students" / "tiny-twin"

    recipe = json.loads((student / "distill.json").read_text())
    assert recipe["architecture"] == {
        "num_layers": 2,
        "hidden_size": 16,
        "num_attention_heads": 2,
        "intermediate_size": 48,
    }
    assert recipe["layer_map"] == [1, 3] and recipe["init"]["init"] == "truncate"
    assert recipe["intermediate"]["hidden_state_pairs"] == [[0, 0], [1, 2], [2, 4]]
    assert recipe["loss"]["weights"] == {"kd": 1.0, "ce": 0.0}
    assert recipe["stage2_teacher_logits"]["teacher_logits"] == "cached"  # stage 2 needs only the teacher's logits
    assert json.loads((twin / "distill.json").read_text())["objective"] == "labels"

    # per-layer stage-1 terms are logged, and the stage-1 loss falls (teacher heads 4 -> student heads 2: grouped)
    records = [r for r in read_log(student / "stage1" / "logs" / "train_log.jsonl") if "loss" in r]
    assert {"loss_emb", "loss_hid_1", "loss_hid_2", "loss_att_1", "loss_att_2"} <= set(records[0])
    assert records[-1]["loss"] < records[0]["loss"]

    # the projections are saved with stage 1, never in the student; training state is cleaned up
    assert set(load_file(student / "stage1" / "final" / "projections.safetensors")) >= {"hidden_projection.weight"}
    assert not any("projection" in name for name in load_file(student / "model.safetensors"))
    assert not any(path.name == "checkpoints" for path in student.rglob("*"))

    for directory in (student, twin):
        evaluation = json.loads((directory / "eval.json").read_text())
        assert evaluation["parameters"] < evaluation["teacher_parameters"]
        assert 0.0 <= evaluation["metrics"]["accuracy"] <= 1.0
    # the twin trains both stages' epochs on labels: 1 + 1 epochs of 25 steps
    twin_log = read_log(twin / "logs" / "train_log.jsonl")
    assert max(r["step"] for r in twin_log) == 50


class Crash(RuntimeError):
    pass


def test_a_crash_in_stage1_resumes_from_its_checkpoint_and_a_crash_in_stage2_skips_stage1(
    tmp_path, config_path, monkeypatch
):
    run_dir = tmp_path / "run"
    config = load_config(config_path, ["students.0.baseline=false"])
    run_pipeline(config, run_dir, stages=("teacher",))
    student = run_dir / "students" / "tiny"
    calls: list[tuple[str, str | None]] = []
    real_train = train_module.Trainer.train
    plan = {"crash_stage1_at": 6, "crash_stage2": True}

    def train(self, resume_from_checkpoint=None, **kwargs):
        stage = Path(self.args.output_dir).parent.name
        calls.append((stage, resume_from_checkpoint and Path(resume_from_checkpoint).name))
        if stage == "stage1" and plan["crash_stage1_at"]:
            step, plan["crash_stage1_at"] = plan["crash_stage1_at"], None
            self.args.max_steps = step  # stop early (checkpoints 4 and 6 written), then fail as a kill would
            real_train(self, resume_from_checkpoint=resume_from_checkpoint, **kwargs)
            raise Crash("killed in stage 1")
        if stage == "stage2" and plan["crash_stage2"]:
            plan["crash_stage2"] = False
            raise Crash("killed in stage 2")
        return real_train(self, resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    monkeypatch.setattr(train_module.Trainer, "train", train)
    with pytest.raises(Crash, match="stage 1"):
        run_pipeline(config, run_dir, stages=("train",))
    assert last_complete_checkpoint(student / "stage1" / "checkpoints").endswith("checkpoint-6")
    with pytest.raises(Crash, match="stage 2"):
        run_pipeline(config, run_dir, stages=("train",))
    assert (student / "stage1" / "final" / "projections.safetensors").is_file()
    run_pipeline(config, run_dir, stages=("train",))
    assert calls == [("stage1", None), ("stage1", "checkpoint-6"), ("stage2", None), ("stage2", None)]
    assert (student / "eval.json").is_file()


def test_augmented_student_trains_on_the_kept_copies_with_the_filters_teacher_logits(tmp_path, config_path):
    overrides = [
        "students.0.baseline=false",
        "students.0.augmentation.enabled=true",
        "students.0.augmentation.copies=1",
    ]
    config = load_config(config_path, overrides)
    run_dir = tmp_path / "run"
    run_pipeline(config, run_dir, stages=("teacher", "train"))
    recipe = json.loads((run_dir / "students" / "tiny" / "distill.json").read_text())
    augmentation, logits_record = recipe["augmentation"], recipe["stage2_teacher_logits"]
    assert augmentation["cache"] == "miss" and augmentation["kept"] > 0
    # stage 2 reuses the logits the filter computed instead of running the teacher over the set again
    assert logits_record["cache"] == "miss" and logits_record["computed_by"] == "augmentation filter"
    cached = np.load(logits_record["cache_file"])
    assert len(cached) == 400 + augmentation["kept"]
    teacher = AutoModelForSequenceClassification.from_pretrained(run_dir / "teacher")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "teacher")
    data = load_task_data(config.data, config.task, config.seed)
    expected = predict_logits(teacher, tokenize(data.train, tokenizer, 32), tokenizer)
    assert np.allclose(cached[:400], expected, atol=1e-5)  # the original rows first, in order
    stage2 = [r for r in read_log(run_dir / "students" / "tiny" / "stage2" / "logs" / "train_log.jsonl") if "step" in r]
    assert max(r["step"] for r in stage2) == -(-len(cached) // 16)  # one epoch over originals and copies
