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


def test_validate_reports_rows_task_kind_and_labels(tmp_path, sst2_like, tiny_bert_dir):
    train, dev = sst2_like
    job = write_job(tmp_path, train, dev, tiny_bert_dir, [{"name": "s", "num_layers": 2}])
    result = validate(job)
    assert result.exception is None, result.exception
    counts = [
        [line.rsplit("\t", 1)[1] for line in path.read_text(encoding="utf-8").splitlines()[1:]].count(label)
        for path in (train, dev)
        for label in ("0", "1")
    ]
    lines = result.output.splitlines()
    assert (
        lines[1] == "data: 96 train rows, 32 dev rows; single texts; classification with 2 classes; metrics: accuracy"
    )
    assert (
        lines[2] == f"labels (train / dev rows): negative {counts[0]} / {counts[2]}, positive {counts[1]} / {counts[3]}"
    )


def test_validate_reports_a_headerless_regression_task_by_position(tmp_path, tiny_encoder_dir):
    rows = ["0\tthe film\tit was good\t4.5", "1\ta plot\tso dull\t0.5", "2\tfun\tnice\t3.0"]
    data_file = tmp_path / "pairs.tsv"
    data_file.write_text("\n".join(rows) + "\n", encoding="utf-8")
    job = write_job(tmp_path, data_file, data_file, tiny_encoder_dir, [{"name": "s", "num_layers": 2}], task=None)
    overrides = ["data.header=false", "data.text_column=1", "data.text_pair_column=2", "data.label_column=3"]
    result = CliRunner().invoke(
        cli, ["validate", str(job), *(f for o in overrides for f in ("--set", o))], standalone_mode=False
    )
    assert result.exception is None, result.exception
    assert result.output.splitlines()[1:3] == [
        "data: 3 train rows, 3 dev rows; text pairs; regression; metrics: pearson, spearman",
        "labels: train 0.5 to 4.5 (mean 2.66667), dev 0.5 to 4.5 (mean 2.66667)",
    ]
    budgets = result.output.splitlines()[3:]  # then the budgets distill would choose for these 3 pairs
    assert budgets[0].startswith("budget: teacher: 20 epochs") and "3 training pairs" in budgets[0]


def test_validate_lists_a_data_problem_with_the_others(tmp_path, sst2_like, tiny_bert_dir):
    train, dev = sst2_like
    job = write_job(tmp_path, train, dev, tiny_bert_dir, [{"name": "s", "num_layers": 6}])
    result = CliRunner().invoke(cli, ["validate", str(job), "--set", "data.label_column=nope"], standalone_mode=False)
    message = str(result.exception)
    assert message.startswith("the config has 2 problems:"), message
    lines = message.splitlines()[1:]
    assert lines[0].startswith(f"  - data: {train} has no column for data.label_column 'nope'"), lines
    assert lines[1].startswith("  - students.0 (s): ") and "at most 4" in lines[1]


def test_validate_with_only_a_data_problem_raises_it_as_it_is(tmp_path, sst2_like, tiny_bert_dir):
    train, _ = sst2_like
    headerless = tmp_path / "headerless.tsv"
    headerless.write_text("".join(train.read_text(encoding="utf-8").splitlines(keepends=True)[1:]), encoding="utf-8")
    job = write_job(tmp_path, headerless, headerless, tiny_bert_dir, [{"name": "s", "num_layers": 2}])
    result = validate(job)
    assert type(result.exception).__name__ == "DataError", result.output
    message = str(result.exception)
    assert "looks like data" in message and "--set data.header=false --set data.text_column=0" in message
