"""Checks that need only the config, the data and the teacher's config.json run before any stage: `distill validate`
reports them all at once, and `distill run` stops on them before writing anything."""

from __future__ import annotations

import yaml
from click.testing import CliRunner

from distill.cli import cli

TINYBERT = {
    "name": "tiny",
    "recipe": "tinybert",
    "num_layers": 2,
    "hidden_size": 24,
    "num_attention_heads": 4,
    "intermediate_size": 48,
}


def write_job(directory, train, dev, teacher_dir, students, **sections):
    raw = {
        "task": "sst2",
        "data": {"train": str(train), "validation": str(dev), "max_length": 16},
        "teacher": {"source": str(teacher_dir)},
        "students": students,
        **sections,
    }
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def validate(job):
    return CliRunner().invoke(cli, ["validate", str(job)], standalone_mode=False)


def test_every_problem_is_reported_at_once(tmp_path, sst2_like, tiny_bert_dir):
    students = [
        {"name": "wide", "num_layers": 2, "layer_selection": [0, 9]},  # the teacher has 4 layers
        {**TINYBERT, "name": "odd", "hidden_size": 24, "num_attention_heads": 3},  # 3 heads do not split the 4
        {**TINYBERT, "name": "ckpt", "init": "checkpoint", "init_checkpoint": str(tiny_bert_dir)},  # 4 x 32
    ]
    job = write_job(tmp_path, *sst2_like, tiny_bert_dir, students, bench={"seq_lengths": [16, 256]})
    result = validate(job)
    assert type(result.exception).__name__ == "ConfigError", result.output
    message = str(result.exception)
    assert message.startswith("the config has 4 problems:"), message
    lines = message.splitlines()[1:]
    assert lines[0].startswith("  - bench.seq_lengths: 256 is past the teacher's 128 positions")
    assert lines[1].startswith("  - students.0 (wide): ") and "9" in lines[1]
    assert (
        lines[2].startswith("  - students.1 (odd): ") and "4 heads do not split evenly into the student's 3" in lines[2]
    )
    assert lines[3].startswith("  - students.2 (ckpt): ") and "num_hidden_layers 4 (config says 2)" in lines[3]


def test_one_problem_is_one_sentence(tmp_path, sst2_like, tiny_bert_dir):
    job = write_job(tmp_path, *sst2_like, tiny_bert_dir, [{"name": "s", "num_layers": 6}])
    message = str(validate(job).exception)
    assert "\n" not in message and "students.0 (s): " in message and "at most 4" in message


def test_a_good_config_passes(tmp_path, sst2_like, tiny_bert_dir):
    job = write_job(tmp_path, *sst2_like, tiny_bert_dir, [{"name": "s", "num_layers": 2}, TINYBERT])
    result = validate(job)
    assert result.exception is None, result.exception
    assert "valid (2 student(s) to train: s, tiny)" in result.output


def test_run_stops_before_writing_anything(tmp_path, sst2_like, tiny_bert_dir):
    job = write_job(tmp_path, *sst2_like, tiny_bert_dir, [{"name": "s", "num_layers": 6}])
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(job), "--run-dir", str(run_dir)], standalone_mode=False)
    assert type(result.exception).__name__ == "ConfigError"
    assert not run_dir.exists()
