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
from distill.layout import LOCK_FILE
from distill.lock import claim, run_lock
from distill.runtime import TEXT_PAIR_KEY, OnnxClassifier
from distill.train import last_complete_checkpoint
from tests.conftest import REPO_ROOT, make_tiny_bert, write_sst2_like
from tests.test_cli_errors import run_cli, write_config
from tests.test_runtime import bundle  # noqa: F401 - the exported tiny bundle fixture

QUICK = REPO_ROOT / "configs" / "sst2" / "quick.yaml"


def checksums(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under ``directory`` but the run lock (which holds the pid of its last holder)."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != LOCK_FILE
    }


def changed_files(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The files of ``before`` that are missing or different in ``after``."""
    return sorted(name for name, digest in before.items() if after.get(name) != digest)


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
    before = checksums(checkpoint)
    result = run_cli("validate", job, cwd=tmp_path)
    assert result.returncode == 1
    assert "holds no safetensors weights, and distill loads no other format" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not marker.exists()
    assert checksums(checkpoint) == before


def write_checkpoints(checkpoints: Path, steps: tuple[int, ...]) -> None:
    """Complete stand-in Trainer checkpoints: state, safetensors weights and torch's zip-format optimizer state."""
    for step in steps:
        folder = checkpoints / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        save_file({"weight": torch.zeros(256)}, str(folder / "model.safetensors"))
        torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")


@pytest.mark.parametrize("cut", ["model.safetensors", "optimizer.pt"])
def test_a_checkpoint_cut_short_is_skipped_with_one_line_and_the_previous_one_resumed(tmp_path, capsys, cut):
    checkpoints = tmp_path / "checkpoints"
    write_checkpoints(checkpoints, (5, 10))
    earlier = checksums(checkpoints / "checkpoint-5")
    newest = checkpoints / "checkpoint-10" / cut
    newest.write_bytes(newest.read_bytes()[:200])
    assert last_complete_checkpoint(checkpoints) == str(checkpoints / "checkpoint-5")
    assert capsys.readouterr().err.splitlines() == [
        f"note: checkpoint-10 in {checkpoints} is incomplete or its weights do not load; removed, training resumes "
        "from checkpoint-5"
    ]
    assert checksums(checkpoints / "checkpoint-5") == earlier
    assert sorted(path.name for path in checkpoints.iterdir()) == ["checkpoint-5"]


def test_when_no_checkpoint_loads_training_starts_over_with_one_line(tmp_path, capsys):
    checkpoints = tmp_path / "checkpoints"
    write_checkpoints(checkpoints, (5, 10))
    for step in (5, 10):
        (checkpoints / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"")
    assert last_complete_checkpoint(checkpoints) is None
    assert capsys.readouterr().err.splitlines() == [
        f"note: checkpoint-10, checkpoint-5 in {checkpoints} are incomplete or their weights do not load; removed, "
        "training starts from the beginning"
    ]


# --- the teacher-logit cache --------------------------------------------------------------------------------------


def test_a_teacher_logit_cache_cut_short_is_rebuilt_with_one_line(tmp_path, capsys):
    import numpy as np
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill.cache import cached_logits, with_teacher_logits
    from distill.data import tokenize
    from distill.train import TEACHER_LOGITS
    from tests.conftest import tiny_task

    teacher_dir = make_tiny_bert(tmp_path / "teacher", num_layers=2)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    train = tokenize(tiny_task(tmp_path / "data", 8, 40).train, tokenizer, 32)
    first, record = with_teacher_logits(train, teacher, teacher_dir, tokenizer, tmp_path / "cache")
    cache = Path(record["cache_file"])
    whole = cache.read_bytes()
    cache.write_bytes(whole[: len(whole) // 2])
    capsys.readouterr()
    again, rebuilt = with_teacher_logits(train, teacher, teacher_dir, tokenizer, tmp_path / "cache")
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "teacher-logit cache" in line]  # (and a bar)
    assert line.startswith(f"note: the teacher-logit cache {cache} does not load (")
    assert line.endswith("); it is removed and computed again")
    assert rebuilt["cache"] == "miss" and rebuilt["cache_file"] == str(cache)
    np.testing.assert_allclose(np.asarray(again[TEACHER_LOGITS]), np.asarray(first[TEACHER_LOGITS]), atol=1e-6)
    assert with_teacher_logits(train, teacher, teacher_dir, tokenizer, tmp_path / "cache")[1]["cache"] == "hit"

    cache.write_bytes(b"not an array")  # the augmentation filter reads the same cache
    logits, hit = cached_logits(cache, lambda: np.asarray(first[TEACHER_LOGITS], dtype=np.float32))
    assert not hit and logits.shape == (40, 2) and np.load(cache).shape == (40, 2)
    assert "it is removed and computed again" in capsys.readouterr().err


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
    before = checksums(copy)
    result = run_cli("predict", copy, "good movie", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert checksums(copy) == before
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
    teacher = checksums(run_dir / "teacher")
    result = run_cli(*command[3:], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[student:s2] resuming an interrupted run" in result.stdout
    assert checksums(run_dir / "teacher") == teacher, "the finished teacher is reused as it was"


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
    assert not (tmp_path / "run").exists()


def test_a_teacher_without_a_padding_token_is_refused_by_validate(tmp_path, sst2_like):
    from transformers import GPT2Config

    teacher = tmp_path / "gpt2"
    GPT2Config(n_layer=2, n_embd=32, n_head=4, architectures=["GPT2ForSequenceClassification"]).save_pretrained(teacher)
    job = write_config(tmp_path, *sst2_like, teacher)
    before = checksums(teacher)
    result = run_cli("validate", job, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "the teacher (gpt2) has no padding token" in result.stderr
    assert checksums(teacher) == before


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


# --- a finished run whose files were damaged later ----------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_encoder_dir) -> Path:
    """A folder holding ``config.yaml`` (a tiny job) and ``run/``, where its teacher and student are trained and
    nothing else has run."""
    from distill.pipeline import run_pipeline
    from tests.test_pipeline import write_config as write_job

    base = tmp_path_factory.mktemp("trained")
    data = write_sst2_like(base / "data" / "train.tsv", 400, seed=1), write_sst2_like(base / "data" / "dev.tsv", 64, 2)
    job = write_job(base, tiny_encoder_dir, *data)
    run_pipeline(load_config(job), base / "run", stages=("teacher", "train"))
    return base


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, trained_run) -> Path:
    """:func:`trained_run` run to the end without interruption (export, bench, report): the reference."""
    from distill.pipeline import run_pipeline

    base = tmp_path_factory.mktemp("finished")
    shutil.copy(trained_run / "config.yaml", base / "config.yaml")  # (its paths are absolute)
    shutil.copytree(trained_run / "run", base / "run")
    run_pipeline(load_config(base / "config.yaml"), base / "run")
    return base


def copy_run(base: Path, tmp_path: Path) -> Path:
    """A copy of ``base/run`` in ``tmp_path/run`` (its job stays ``base/config.yaml``, the same for every copy)."""
    shutil.copytree(base / "run", tmp_path / "run")
    return tmp_path / "run"


def dev_metrics(run_dir: Path) -> dict[tuple[str, str, str], dict[str, float]]:
    """Every benchmarked artifact's dev metrics, by (model, runtime, precision)."""
    results = json.loads((run_dir / "bench" / "results.json").read_text())
    return {(row["name"], row["runtime"], row["precision"]): row["metrics"] for row in results["artifacts"]}


def assert_metrics_match(run_dir: Path, reference: Path, rows: int) -> None:
    """Each artifact's dev accuracy in ``run_dir`` is the uninterrupted ``reference``'s within one standard error
    (over ``rows`` dev examples; at least one example, so that a perfect score leaves room for none of them)."""
    got, expected = dev_metrics(run_dir), dev_metrics(reference)
    assert got.keys() == expected.keys()
    for key, metrics in expected.items():
        accuracy = metrics["accuracy"]
        error = max((accuracy * (1 - accuracy) / rows) ** 0.5, 1 / rows)
        assert abs(got[key]["accuracy"] - accuracy) <= error, (key, got[key], metrics)


def loads(path: Path) -> None:
    """Fails unless ``path`` (ONNX or safetensors) loads whole."""
    if path.suffix == ".onnx":
        import onnx

        onnx.load(str(path))
    else:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as weights:
            for name in weights.keys():
                weights.get_tensor(name)


@pytest.mark.parametrize(
    ("damaged", "stage"),
    [
        ("onnx/s2/model.onnx", "export"),
        pytest.param("onnx/*/model.*.onnx", "export", marks=pytest.mark.integration),  # a fused or INT8 graph
        ("teacher/model.safetensors", "teacher"),
    ],
)
def test_a_file_cut_short_in_a_finished_run_is_recomputed_by_its_stage(tmp_path, finished_run, capsys, damaged, stage):
    from distill.pipeline import run_pipeline

    shipped = sorted((finished_run / "run").glob(damaged))  # which fused or INT8 graphs ship depends on the budget
    assert shipped, f"the reference run shipped no {damaged}"
    damaged = shipped[0].relative_to(finished_run / "run").as_posix()
    run_dir = copy_run(finished_run, tmp_path)
    before = checksums(run_dir)
    path = run_dir / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    capsys.readouterr()
    run_pipeline(load_config(finished_run / "config.yaml"), run_dir)
    out = capsys.readouterr().out
    (kept,) = (run_dir / "previous").glob(f"{stage}-*")
    line = f"[{stage}] {damaged} changed since {stage} finished: recomputing {stage}; what it left is kept in {kept}"
    assert line in out
    assert out.count("complete, inputs unchanged: skipped") == (3 if stage == "export" else 4)
    loads(path)
    upstream = ("teacher/", "students/") if stage == "export" else ("students/", "onnx/", "bench/results.json")
    assert not [name for name in changed_files(before, checksums(run_dir)) if name.startswith(upstream)]
    capsys.readouterr()
    run_pipeline(load_config(finished_run / "config.yaml"), run_dir)
    assert capsys.readouterr().out.count("complete, inputs unchanged: skipped") == 5


def test_bench_on_a_run_whose_onnx_file_was_cut_short_is_one_sentence(tmp_path, finished_run):
    run_dir = copy_run(finished_run, tmp_path)
    model = run_dir / "onnx" / "s2" / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    before = checksums(run_dir)
    result = run_cli("bench", finished_run / "config.yaml", "--run-dir", run_dir, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {model} changed since stage export finished; rerun `distill export` (or `distill run`) to compute "
        "it again"
    ]
    assert checksums(run_dir) == before


def test_a_second_command_on_a_run_directory_in_use_is_refused_and_changes_nothing(tmp_path, finished_run):
    run_dir = copy_run(finished_run, tmp_path)
    before = checksums(run_dir)
    with run_lock(run_dir):
        result = run_cli("run", finished_run / "config.yaml", "--run-dir", run_dir, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {run_dir} is in use by another distill process (pid {os.getpid()}); wait for it to finish or stop "
        "it, then rerun"
    ]
    assert checksums(run_dir) == before


# --- SIGKILL during export, INT8 and bench; a checkpoint cut short in a real run -----------------------------------

HANG = """
import os, pathlib, sys, time
{imports}
calls = []


def hanging(original):
    def hang(*args, **kwargs):
        calls.append(1)
        if len(calls) == {at}:
            pathlib.Path(os.environ["DISTILL_TEST_MARKER"]).write_text("reached")
            time.sleep(600)
        return original(*args, **kwargs)

    return hang


for name in {names!r}:
    setattr({owner}, name, hanging(getattr({owner}, name)))
from distill.cli import main

sys.argv = ["distill", *sys.argv[1:]]
main()
"""
"""``python -c`` source of ``distill ARGS`` that stops, for its caller to kill it, at call ``at`` of the functions
``names`` of ``owner`` (counted together)."""

KILL_POINTS = {
    # the second model's torch.onnx.export: the teacher's bundle is finished, the student's is a staging folder
    "export": ("import torch.onnx", "torch.onnx", ("export",), 2),
    # the first INT8 quantisation (dynamic or static), after the fp32 bundle was swapped in
    "int8": ("import onnxruntime.quantization", "onnxruntime.quantization", ("quantize_dynamic", "quantize_static"), 1),
    # an ONNX Runtime call in the middle of the benchmark
    "bench": ("import onnxruntime", "onnxruntime.InferenceSession", ("run",), 12),
}


def kill_at(point: str, arguments: list, tmp_path: Path, timeout: float = 300) -> None:
    """Run ``distill ARGUMENTS`` in a subprocess, SIGKILL it once it reaches :data:`KILL_POINTS` ``[point]``."""
    imports, owner, names, at = KILL_POINTS[point]
    marker = tmp_path / f"reached-{point}"
    source = HANG.format(imports=imports, owner=owner, names=names, at=at)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT), "DISTILL_TEST_MARKER": str(marker)}
    command = [sys.executable, "-c", source, *map(str, arguments)]
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while not marker.exists():
        if process.poll() is not None:
            raise AssertionError(f"distill ended before {point}: {process.stderr.read().decode()[-2000:]}")
        assert time.time() < deadline, f"distill did not reach {point} in {timeout} s"
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()


def under(files: dict[str, str], *folders: str) -> dict[str, str]:
    """The entries of :func:`checksums` inside ``folders``."""
    prefixes = tuple(f"{folder}/" for folder in folders)
    return {name: digest for name, digest in files.items() if name.startswith(prefixes)}


def stage_status(run_dir: Path, key: str) -> str:
    return json.loads((run_dir / "manifest.json").read_text())["stages"][key]["status"]


@pytest.mark.integration
@pytest.mark.parametrize("point", ["export", "int8"])
def test_sigkill_during_export_then_the_rerun_finishes_with_the_uninterrupted_metrics(
    tmp_path, trained_run, finished_run, point
):
    run_dir = copy_run(trained_run, tmp_path)
    job = trained_run / "config.yaml"
    trained = under(checksums(run_dir), "teacher", "students", "cache")
    kill_at(point, ["export", job, "--run-dir", run_dir], tmp_path)
    assert stage_status(run_dir, "export") == "running"
    if point == "export":  # killed while the student's bundle was being written
        assert (run_dir / "onnx" / "teacher" / "model.onnx").is_file() and list((run_dir / "onnx").glob(".s2.*.tmp"))
    else:  # killed while quantising the first bundle, its fp32 graph in place
        assert (run_dir / "onnx" / "teacher" / "model.onnx").is_file()
    result = run_cli("run", job, "--run-dir", run_dir, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[export] resuming an interrupted run" in result.stdout
    assert "[student:s2] complete, inputs unchanged: skipped" in result.stdout
    assert not list((run_dir / "onnx").glob(".*.tmp")), "the killed export's staging folder is gone"
    assert changed_files(trained, checksums(run_dir)) == [], "the teacher and the student are untouched"
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert {key: entry["status"] for key, entry in stages.items()} == dict.fromkeys(stages, "complete")
    assert_metrics_match(run_dir, finished_run / "run", rows=64)


@pytest.mark.integration
def test_sigkill_during_bench_then_the_rerun_finishes_with_the_uninterrupted_metrics(tmp_path, finished_run):
    run_dir = copy_run(finished_run, tmp_path)
    job = finished_run / "config.yaml"
    exported = under(checksums(run_dir), "teacher", "students", "onnx")
    arguments = ["bench", job, "--run-dir", run_dir, "--set", "bench.iterations=6"]  # a new measurement
    kill_at("bench", arguments, tmp_path)
    assert stage_status(run_dir, "bench") == "running" and not (run_dir / "bench" / "results.json").exists()
    (kept,) = (run_dir / "previous").glob("bench-*")
    reference = finished_run / "run" / "bench" / "results.json"
    assert (kept / "bench" / "results.json").read_bytes() == reference.read_bytes(), "the earlier results are kept"
    result = run_cli(*arguments, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[bench] resuming an interrupted run" in result.stdout
    assert stage_status(run_dir, "bench") == "complete"
    assert changed_files(exported, checksums(run_dir)) == [], "the trained models and ONNX bundles are untouched"
    assert_metrics_match(run_dir, finished_run / "run", rows=64)


@pytest.mark.integration
def test_a_newest_checkpoint_cut_short_is_skipped_and_training_resumes_from_the_one_before(tmp_path, trained_run):
    job = trained_run / "config.yaml"
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run / "run", run_dir)
    teacher = checksums(run_dir / "teacher")
    arguments = ["train", job, "--run-dir", run_dir, "--set", "students.0.training.epochs=2"]
    checkpoints = run_dir / "students" / "s2" / "checkpoints"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "distill", *map(str, arguments)], env=env, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 300
    while len(list(checkpoints.glob("checkpoint-*/trainer_state.json"))) < 2:
        assert process.poll() is None and time.time() < deadline, "training ended before two checkpoints"
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    steps = sorted(int(path.parent.name.split("-")[1]) for path in checkpoints.glob("checkpoint-*/trainer_state.json"))
    newest, before = checkpoints / f"checkpoint-{steps[-1]}", f"checkpoint-{steps[-2]}"
    (newest / "model.safetensors").write_bytes((newest / "model.safetensors").read_bytes()[:500])
    result = run_cli(*arguments, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and f"{newest.name}" in notes[0] and notes[0].endswith(f"training resumes from {before}")
    record = json.loads((run_dir / "students" / "s2" / "distill.json").read_text())
    assert record["resumed_from"].endswith(before)
    assert checksums(run_dir / "teacher") == teacher
