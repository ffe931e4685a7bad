"""The command line: every command's --help, `validate`, and bad input failing fast with one clear error line.

The bad-input cases run the real console entry point (``python -m distill``) in a subprocess, so the exit status and
stderr are exactly what a user sees. They all fail in preflight, before anything is trained or written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from distill.cli import cli
from distill.errors import ConfigError
from tests.conftest import REPO_ROOT


def write_config(directory: Path, train: Path, validation: Path, teacher_dir: Path, **sections) -> Path:
    """A small job over the given files and teacher directory, written as ``directory/job.yaml``."""
    raw = {
        "task": "sst2",
        "seed": 0,
        "data": {"train": str(train), "validation": str(validation), "max_length": 16},
        "teacher": {"source": str(teacher_dir), "training": {"epochs": 1, "batch_size": 8}},
        "students": [{"name": "s2", "num_layers": 2, "training": {"epochs": 1, "batch_size": 8}}],
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key].update(value)
        else:
            raw[key] = value
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [sys.executable, "-m", "distill", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def assert_clean_failure(result: subprocess.CompletedProcess, *fragments: str) -> list[str]:
    """Exit status 1, stderr opening with one ``error:`` line, no traceback; returns stderr's lines."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), output
    assert sum(line.startswith("error") for line in lines) == 1, output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, output)
    return lines


@pytest.fixture
def job(tmp_path, sst2_like, tiny_bert_dir) -> Path:
    train, dev = sst2_like
    return write_config(tmp_path, train, dev, tiny_bert_dir)


# --- help and version ----------------------------------------------------------------------------------------------


def test_expected_commands_exist():
    expected = {"validate", "run", "teacher", "train", "export", "bench", "report", "predict", "evaluate"}
    assert expected <= set(cli.commands)


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_has_working_help(name):
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert f"Usage: cli {name}" in result.output
    command = cli.commands[name]
    assert command.help and command.help.split("\n")[0].strip()[:30] in " ".join(result.output.split())
    if name == "predict":
        assert "BUNDLE TEXTS" in result.output and "--pair" in result.output
        return
    if name == "compare":
        assert "RUN_DIRS..." in result.output and "--out" in result.output
        return
    if name == "evaluate":
        assert "RUN_DIR|BUNDLE FILE" in result.output and "--config" in result.output
        return
    if name != "validate":
        assert "--run-dir" in result.output
    assert "--set" in result.output


def test_group_help_lists_every_command():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in cli.commands:
        assert name in result.output


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and "0.1.0" in result.output


# --- validate ------------------------------------------------------------------------------------------------------


def test_validate_a_good_config(job, tmp_path):
    result = run_cli("validate", job, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"{job}: valid (1 student(s) to train: s2)"
    assert result.stdout.splitlines()[1].startswith("data: 96 train rows, 32 dev rows; single texts;")
    assert result.stderr.strip() == ""


def test_validate_the_shipped_quick_config():
    result = CliRunner().invoke(cli, ["validate", str(REPO_ROOT / "configs" / "sst2" / "quick.yaml")])
    assert result.exit_code == 0, result.output
    assert "quick.yaml: valid (" in result.output


def test_validate_lists_every_problem(tmp_path, sst2_like, tiny_bert_dir):
    train, dev = sst2_like
    path = write_config(
        tmp_path,
        train,
        dev,
        tiny_bert_dir,
        colour="blue",
        data={"trian": "x"},
        students=[{"name": "s", "num_layers": 0}],
    )
    result = run_cli("validate", path, cwd=tmp_path)
    lines = assert_clean_failure(result, f"{path} has 3 problem(s):")
    assert lines[1:] and all(line.startswith("  - ") for line in lines[1:]), lines
    assert {line.split(":")[0] for line in lines[1:]} == {"  - colour", "  - data.trian", "  - students.0.num_layers"}


def test_validate_a_missing_config_file(tmp_path):
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "nope.yaml")], standalone_mode=False)
    assert isinstance(result.exception, ConfigError)
    assert "nope.yaml does not exist" in str(result.exception)


def test_bad_override_syntax(job, tmp_path):
    assert_clean_failure(run_cli("validate", job, "--set", "students.0.num_layers", cwd=tmp_path), "is not KEY=VALUE")


# --- run: bad input fails fast with one error line and leaves no run directory --------------------------------------


def test_run_with_a_missing_data_file(tmp_path, sst2_like, tiny_bert_dir):
    _, dev = sst2_like
    missing = tmp_path / "data" / "no_such_train.tsv"
    job = write_config(tmp_path, missing, dev, tiny_bert_dir)
    run_dir = tmp_path / "run"
    lines = assert_clean_failure(
        run_cli("run", job, "--run-dir", run_dir, cwd=tmp_path), str(missing), "does not exist"
    )
    assert len(lines) == 1, lines
    assert not run_dir.exists()


def test_run_with_an_unknown_config_key(tmp_path, sst2_like, tiny_bert_dir):
    train, dev = sst2_like
    job = write_config(tmp_path, train, dev, tiny_bert_dir, teacher={"finetun": "never"})
    run_dir = tmp_path / "run"
    lines = assert_clean_failure(run_cli("run", job, "--run-dir", run_dir, cwd=tmp_path), "has 1 problem(s)")
    assert len(lines) == 2 and lines[1].startswith("  - teacher.finetun: unknown key (value 'never')"), lines
    assert not run_dir.exists()


def test_run_with_a_label_column_that_does_not_exist(job, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("run", job, "--run-dir", run_dir, "--set", "data.label_column=nope", cwd=tmp_path)
    lines = assert_clean_failure(result, "data.label_column 'nope'", "sentence, label")
    assert len(lines) == 1, lines
    assert not run_dir.exists()


def test_run_with_a_teacher_path_that_does_not_exist(job, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("run", job, "--run-dir", run_dir, "--set", "teacher.source=./no/such/dir", cwd=tmp_path)
    lines = assert_clean_failure(result, str((tmp_path / "no" / "such" / "dir").resolve()), "teacher.source")
    assert len(lines) == 1, lines
    assert not run_dir.exists()


def test_run_with_rte_columns_under_task_sst2(tmp_path, tiny_bert_dir):
    rte = tmp_path / "rte.tsv"
    rte.write_text(
        "index\tsentence1\tsentence2\tlabel\n0\tA man eats.\tSomeone eats.\tentailment\n"
        '1\tIt is "cold.\tIt is warm.\tnot_entailment\n',
        encoding="utf-8",
    )
    job = write_config(tmp_path, rte, rte, tiny_bert_dir)
    run_dir = tmp_path / "run"
    lines = assert_clean_failure(
        run_cli("run", job, "--run-dir", run_dir, cwd=tmp_path),
        "data.text_column 'sentence'",
        "index, sentence1, sentence2, label",
    )
    assert len(lines) == 1, lines
    assert not run_dir.exists()


def test_failed_run_keeps_an_existing_run_directory(job, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine", encoding="utf-8")
    result = run_cli("run", job, "--run-dir", run_dir, "--set", "data.label_column=nope", cwd=tmp_path)
    assert_clean_failure(result, "data.label_column 'nope'")
    assert (run_dir / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"]


def test_run_directory_created_before_a_teacher_failure_is_removed(job, tmp_path, monkeypatch, capsys):
    # The teacher directory exists (so preflight passes and the run directory is created) but holds no model.
    from distill.cli import main

    empty_teacher = tmp_path / "empty_teacher"
    empty_teacher.mkdir()
    run_dir = tmp_path / "run"
    monkeypatch.setattr(
        sys,
        "argv",
        ["distill", "teacher", str(job), "--run-dir", str(run_dir), "--set", f"teacher.source={empty_teacher}"],
    )
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [
        f"error: teacher directory {empty_teacher} has no config.json; "
        "point teacher.source at a save_pretrained directory"
    ]
    assert not run_dir.exists()


@pytest.mark.parametrize("stage", ["teacher", "train"])
def test_stage_commands_fail_the_same_way(job, tmp_path, monkeypatch, stage):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(
        cli, [stage, str(job), "--run-dir", str(run_dir), "--set", "data.train=nope.tsv"], standalone_mode=False
    )
    assert result.exception is not None and type(result.exception).__name__ == "DataError"
    assert f"{tmp_path.resolve() / 'nope.tsv'} does not exist" in str(result.exception)
    assert not run_dir.exists()


def test_main_turns_distill_errors_into_exit_1(monkeypatch, capsys, tmp_path):
    from distill.cli import main

    monkeypatch.setattr(sys, "argv", ["distill", "validate", str(tmp_path / "missing.yaml")])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: config file ") and captured.err.count("\n") == 1
    assert captured.out == ""


def test_main_shows_usage_errors_with_click_exit_status(monkeypatch, capsys):
    from distill.cli import main

    monkeypatch.setattr(sys, "argv", ["distill", "frobnicate"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    assert "No such command 'frobnicate'" in capsys.readouterr().err
    assert isinstance(click.UsageError("x"), click.ClickException)
