"""``training.precision: bf16`` is used only where the hardware supports it, and says so otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from distill import env
from distill.config import TrainingConfig, config_from_dict
from distill.files import read_json
from distill.students.stage import run_student_stage
from distill.train import resolve_precision
from tests.conftest import make_tiny_bert, tiny_task


def with_flags(monkeypatch, flags):
    monkeypatch.setattr(env, "host_info", lambda: {"cpu_flags": flags})
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)


def test_fp32_is_the_default_and_never_autocasts():
    assert TrainingConfig().precision == "fp32"
    assert resolve_precision("fp32") == (False, "fp32")


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_bf16_on_a_cpu_that_supports_it(monkeypatch, flag):
    with_flags(monkeypatch, ["avx2", flag])
    use, note = resolve_precision("bf16")
    assert use and flag in note


def test_bf16_falls_back_to_fp32_with_a_reason(monkeypatch):
    with_flags(monkeypatch, ["avx2", "fma"])
    use, note = resolve_precision("bf16")
    assert not use
    assert note.startswith("fp32: bf16 was requested but this CPU has neither AVX512-BF16 nor AMX-BF16")
    assert "avx2, fma" in note


def test_unknown_precision_is_a_config_error():
    with pytest.raises(ValueError, match="'fp32' or 'bf16'"):
        TrainingConfig(precision="fp16")


@pytest.mark.parametrize(("flags", "labelled_in"), [(["avx2", "amx_bf16"], "bf16"), (["avx2"], "fp32")])
def test_a_bf16_student_has_the_teacher_label_its_rows_in_bf16_where_the_cpu_has_it(
    tmp_path, monkeypatch, flags, labelled_in
):
    with_flags(monkeypatch, flags)
    teacher_dir = make_tiny_bert(tmp_path / "teacher", num_layers=2)
    data = tiny_task(tmp_path / "data", dev_rows=8, train_rows=32)
    np.save(teacher_dir / "dev_logits.npy", np.zeros((8, 2), dtype=np.float32))  # what the teacher stage leaves
    training = {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "precision": "bf16"}
    config = config_from_dict(
        {
            "task": "sst2",
            "data": {"train": "/d/train.tsv", "validation": "/d/dev.tsv", "max_length": 32},
            "students": [
                {
                    "name": "s",
                    "num_layers": 1,
                    "training": training,
                    "alpha_cos": 0.0,
                    "augmentation": {"enabled": False},
                }
            ],
        }
    )
    run_student_stage(config, config.students[0], data, teacher_dir, tmp_path / "s", tmp_path / "cache")
    record = read_json(tmp_path / "s" / "distill.json")
    assert record["teacher_logits"] == "cached" and record["teacher_logits_precision"] == labelled_in
