"""Faults users and machines cause: each is one clear sentence, nothing is lost and nothing of the user's is
touched. (Part of the fault suite: config files, run directories, locks, weights that are not safetensors, predict.)"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from distill.config import load_config
from distill.errors import ConfigError, StageError, TeacherError
from distill.lock import claim, run_lock
from distill.runtime import TEXT_PAIR_KEY, OnnxClassifier
from distill.train import last_complete_checkpoint
from tests.conftest import REPO_ROOT, make_tiny_bert, write_sst2_like
from tests.test_cli_errors import run_cli, write_config
from tests.test_runtime import bundle  # noqa: F401 - the exported tiny bundle fixture

QUICK = REPO_ROOT / "configs" / "sst2" / "quick.yaml"


def checksums(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


# --- config files -----------------------------------------------------------------------------------------------


def test_a_directory_given_as_the_config(tmp_path):
    with pytest.raises(ConfigError, match="is a directory; pass a YAML file, such as .*full.yaml"):
        load_config(QUICK.parent)


def test_a_config_with_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_bytes(QUICK.read_bytes() + b"# caf\xe9\n")
    lines = QUICK.read_bytes().count(b"\n") + 1
    with pytest.raises(ConfigError, match=f"not UTF-8 text \\(byte 0xe9 on line {lines}\\); save it as UTF-8"):
        load_config(path)


def test_a_yaml_error_names_its_line_column_and_the_bracket_it_interrupted(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("task: sst2\nstudents: [ {name: a}\ndata: {}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "at line 3, column 1" in str(info.value)
    assert "while parsing a flow sequence that starts at line 2, column 11" in str(info.value)


def test_a_misspelt_key_gets_a_suggestion():
    with pytest.raises(ConfigError, match="teacher.training.learning_rte: unknown key .*did you mean learning_rate"):
        load_config(QUICK, ["teacher.training.learning_rte=0.1"])


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_numbers_that_are_not_finite_are_refused(value):
    with pytest.raises(ConfigError, match="teacher.training.epochs: Input should be a finite number"):
        load_config(QUICK, [f"teacher.training.epochs={value}"])


# --- run directories --------------------------------------------------------------------------------------------


def test_a_directory_of_the_users_own_files_is_refused_and_left_untouched(tmp_path, sst2_like, tiny_bert_dir):
    job = write_config(tmp_path, *sst2_like, tiny_bert_dir)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own notes\n")
    (mine / "report.md").write_text("# my report\n")
    before = checksums(mine)
    result = run_cli("run", job, "--run-dir", mine, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {mine} already holds files and is not a distill run directory (it has no manifest.json); "
        "pass an empty or new --run-dir"
    ]
    assert checksums(mine) == before and sorted(p.name for p in mine.iterdir()) == ["config.yaml", "report.md"]


def test_a_second_process_on_the_same_run_directory_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    with run_lock(run_dir):
        with pytest.raises(StageError, match=f"in use by another distill process \\(pid {os.getpid()}\\)"):
            with run_lock(run_dir):
                pass
    with run_lock(run_dir):  # released: the next command takes it
        pass


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    script = (
        "import pathlib, time\nfrom distill.lock import run_lock\n"
        f"with run_lock(pathlib.Path({str(run_dir)!r})):\n    print('held', flush=True)\n    time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(StageError, match=f"pid {holder.pid}"):
        with run_lock(run_dir):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with run_lock(run_dir):
        assert (run_dir / ".lock").read_text().strip() == str(os.getpid())


def test_a_failed_claim_of_a_new_directory_leaves_nothing(tmp_path):
    run_dir = tmp_path / "new"
    with pytest.raises(ConfigError):
        with claim(run_dir):
            raise ConfigError("bad input")
    assert not run_dir.exists()


# --- weights distill loads are safetensors only -----------------------------------------------------------------


class WritesAMarker:
    """Unpickling this writes a file: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_an_init_checkpoint_with_pickled_weights_is_refused_without_unpickling(tmp_path, sst2_like, tiny_bert_dir):
    checkpoint = make_tiny_bert(tmp_path / "checkpoint", num_layers=2)
    for weights in checkpoint.glob("*.safetensors"):
        weights.unlink()
    marker = tmp_path / "marker"
    (checkpoint / "pytorch_model.bin").write_bytes(pickle.dumps(WritesAMarker(marker)))
    student = {
        "name": "tiny", "recipe": "tinybert", "num_layers": 2, "hidden_size": 32, "num_attention_heads": 4,
        "intermediate_size": 64, "init": "checkpoint", "init_checkpoint": str(checkpoint),
    }  # fmt: skip
    job = write_config(tmp_path, *sst2_like, tiny_bert_dir, students=[student])
    result = run_cli("validate", job, cwd=tmp_path)
    assert result.returncode == 1
    assert "holds no safetensors weights, and distill loads no other format" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not marker.exists()


def test_a_checkpoint_whose_weights_were_cut_short_is_not_resumed_from(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    for step in (5, 10):
        (checkpoints / f"checkpoint-{step}").mkdir(parents=True)
        (checkpoints / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        save_file({"weight": torch.zeros(256)}, str(checkpoints / f"checkpoint-{step}" / "model.safetensors"))
    newest = checkpoints / "checkpoint-10" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:200])
    assert last_complete_checkpoint(checkpoints) == str(checkpoints / "checkpoint-5")


# --- predict ----------------------------------------------------------------------------------------------------


def test_predict_refuses_an_empty_text(bundle):  # noqa: F811
    result = run_cli("predict", bundle, "  ", cwd=bundle)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: an empty text has nothing to classify; pass at least one word per text"


def pair_flag_bundle(bundle: Path, tmp_path: Path, pair: bool) -> Path:  # noqa: F811
    copy = tmp_path / f"pair-{pair}"
    shutil.copytree(bundle, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, TEXT_PAIR_KEY: pair}))
    return copy


def test_predict_refuses_pairs_for_a_single_text_model_and_single_texts_for_a_pair_model(bundle, tmp_path):  # noqa: F811
    single, pairs = pair_flag_bundle(bundle, tmp_path, False), pair_flag_bundle(bundle, tmp_path, True)
    result = run_cli("predict", single, "good movie", "--pair", "great", cwd=tmp_path)
    assert result.returncode == 1 and "classifies single texts, not pairs; leave out --pair" in result.stderr
    result = run_cli("predict", pairs, "good movie", cwd=tmp_path)
    assert result.returncode == 1 and "classifies sentence pairs; give the second text of each pair" in result.stderr
    assert len(OnnxClassifier(pairs).predict(["good movie"], ["great"])) == 1


def test_predict_on_a_truncated_model_file_is_one_sentence(bundle, tmp_path):  # noqa: F811
    copy = tmp_path / "truncated"
    shutil.copytree(bundle, copy)
    model = copy / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 3])
    result = run_cli("predict", copy, "good movie", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be loaded" in lines[0] and "rerun `distill export`" in lines[0]


def test_predict_refuses_text_that_is_not_utf8(bundle, tmp_path):  # noqa: F811
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable.encode(), b"-m", b"distill", b"predict", str(bundle).encode(), b"caf\xe9"],
        capture_output=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.decode().strip() == "error: argument 1 is not valid UTF-8 text; pass the text in UTF-8"


# --- signals ----------------------------------------------------------------------------------------------------


def test_sigterm_mid_training_says_how_to_resume_and_the_rerun_resumes(tmp_path, tiny_encoder_dir):
    from tests.test_pipeline import write_config as write_job

    learnable = write_sst2_like(tmp_path / "train.tsv", 400, seed=1), write_sst2_like(tmp_path / "dev.tsv", 64, seed=2)
    config_path = write_job(tmp_path, tiny_encoder_dir, *learnable, epochs=8)
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "distill", "run", str(config_path), "--run-dir", str(run_dir)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    checkpoints = run_dir / "students" / "s2" / "checkpoints"
    while time.time() < deadline and not any(checkpoints.glob("checkpoint-*/trainer_state.json")):
        assert process.poll() is None, "the run ended before a checkpoint was written"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143
    assert stderr.splitlines().count("terminated (SIGTERM); rerun the same command to resume") == 1
    assert "Traceback" not in stderr
    result = run_cli(*command[3:], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[student:s2] resuming an interrupted run" in result.stdout


# --- the teacher's quality gate keeps the teacher -----------------------------------------------------------------


def test_a_teacher_refused_by_the_gate_is_kept_and_reused_with_another_margin(tmp_path, tiny_encoder_dir, capsys):
    from distill.pipeline import run_pipeline
    from tests.test_pipeline import write_config as write_job

    learnable = write_sst2_like(tmp_path / "train.tsv", 400, seed=1), write_sst2_like(tmp_path / "dev.tsv", 64, seed=2)
    job = write_job(tmp_path, tiny_encoder_dir, *learnable)
    run_dir = tmp_path / "run"
    with pytest.raises(
        TeacherError, match="min_margin.*the teacher stays in .*, so a rerun with another margin reuses it"
    ):
        run_pipeline(load_config(job, ["teacher.min_margin=1.0"]), run_dir, stages=("teacher", "train"))
    kept = checksums(run_dir / "teacher")
    assert "eval.json" in kept and "model.safetensors" in kept
    capsys.readouterr()
    run_pipeline(load_config(job, ["teacher.min_margin=0.0"]), run_dir, stages=("teacher",))
    assert "[teacher] complete, inputs unchanged: skipped" in capsys.readouterr().out
    assert checksums(run_dir / "teacher") == kept


# --- disks, teachers and data distill cannot use ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "fix"), [(errno.ENOSPC, "free space on that disk"), (errno.EROFS, "pass a --run-dir on a writable disk")]
)
def test_a_full_or_read_only_disk_is_one_sentence(tmp_path, monkeypatch, capsys, code, fix):
    import distill.pipeline
    from distill.cli import main

    def write_fails(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / "run" / "teacher" / "checkpoints"))

    monkeypatch.setattr(distill.pipeline, "run_pipeline", write_fails)
    monkeypatch.setattr(sys, "argv", ["distill", "teacher", str(QUICK), "--run-dir", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {os.strerror(code).lower()} writing {tmp_path}")
    assert fix in lines[0] and "rerun the same command to resume" in lines[0]


def test_a_teacher_without_a_padding_token_is_refused_by_validate(tmp_path, sst2_like):
    from transformers import GPT2Config

    teacher = tmp_path / "gpt2"
    GPT2Config(n_layer=2, n_embd=32, n_head=4, architectures=["GPT2ForSequenceClassification"]).save_pretrained(teacher)
    job = write_config(tmp_path, *sst2_like, teacher)
    result = run_cli("validate", job, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "the teacher (gpt2) has no padding token" in result.stderr


def test_a_text_column_of_objects_is_refused(tmp_path):
    from distill.config import DataConfig
    from distill.data import load_task_data
    from distill.errors import DataError

    rows = [{"text": {"title": "good", "body": "fine film"}, "label": 1}, {"text": {"title": "bad"}, "label": 0}]
    for split in ("train", "dev"):
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    data = DataConfig(train=tmp_path / "train.jsonl", validation=tmp_path / "dev.jsonl", text_column="text",
                      label_column="label")  # fmt: skip
    with pytest.raises(DataError, match="data.text_column 'text' holds dict values such as .*not text"):
        load_task_data(data, None)
