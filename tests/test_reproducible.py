"""A run is a function of its config: the same config trains the same teacher, students and twins bit for bit,
whatever random state the process started with (torch seeds each new process at random)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from distill.config import load_config
from distill.pipeline import run_pipeline
from tests.conftest import tiny_tinybert_student, write_sst2_like

TRAINING = {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "save_steps": 50, "logging_steps": 5}


def write_config(tmp_path: Path, teacher_dir: Path) -> Path:
    train = write_sst2_like(tmp_path / "data" / "train.tsv", 400, seed=1)
    dev = write_sst2_like(tmp_path / "data" / "dev.tsv", 32, seed=2)
    config = {
        "task": "sst2",
        "seed": 3,
        "data": {"train": str(train), "validation": str(dev), "max_length": 32},
        "teacher": {"source": str(teacher_dir), "min_margin": 0.0, "training": {**TRAINING, "epochs": 4}},
        "students": [
            {"name": "distil", "num_layers": 2, "baseline": True, "training": TRAINING},
            tiny_tinybert_student(TRAINING, TRAINING),
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_the_same_config_trains_the_same_models_in_processes_with_different_random_states(tmp_path, tiny_encoder_dir):
    config = load_config(write_config(tmp_path, tiny_encoder_dir))
    runs = []
    for process_state in (1234, 99):
        torch.manual_seed(process_state)  # stands for the random state torch starts each process with
        run_dir = tmp_path / f"run-{process_state}"
        run_pipeline(config, run_dir, stages=("teacher", "train"))
        runs.append(run_dir)

    first, second = runs
    models = ["teacher"] + [f"students/{name}" for name in ("distil", "distil-twin", "tiny", "tiny-twin")]
    for model in models:
        np.testing.assert_array_equal(
            np.load(first / model / "dev_logits.npy"), np.load(second / model / "dev_logits.npy"), err_msg=model
        )
    # the students did train: a student's predictions differ from its twin's
    assert not np.array_equal(
        np.load(first / "students" / "distil" / "dev_logits.npy"),
        np.load(first / "students" / "distil-twin" / "dev_logits.npy"),
    )
