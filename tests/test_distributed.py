"""Data-parallel runs: the collectives on two gloo ranks, the launcher's checks before any process starts, and
(integration tier) two-process runs of the real CLI on a tiny random BERT: DDP splits each global batch across the
ranks, rank 0 alone writes, a SIGKILLed run resumes with another process count, and a failure on one rank stops every
rank with one clear message.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch.multiprocessing
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distill import distributed
from distill.config import load_config
from distill.data import load_task_data, tokenize
from distill.errors import ConfigError
from distill.evaluate import predict_logits
from tests.conftest import start_run_until_checkpoint
from tests.test_cli_errors import run_cli
from tests.test_pipeline import manifest, write_config


def test_helpers_are_identities_in_one_process(tmp_path):
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    assert distributed.broadcast({"a": 1}) == {"a": 1}
    rows = np.arange(12).reshape(6, 2)
    assert distributed.gather_rows(rows) is rows
    assert distributed.shard_bounds(7) == (0, 7)
    distributed.barrier()
    distributed.leave()
    with distributed.main_process_first():
        (tmp_path / "made").write_text("x")
    assert (tmp_path / "made").is_file()


def test_only_a_collective_broken_by_a_dead_peer_is_reduced_to_one_line(monkeypatch):
    broken = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:44210")
    assert not distributed.lost_peer(broken), "outside a data-parallel run every error keeps its traceback"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.lost_peer(broken)
    assert not distributed.lost_peer(RuntimeError("CUDA out of memory"))
    assert not distributed.lost_peer(ValueError("Connection closed by peer"))


def test_uneven_global_batch_is_refused_naming_every_offender():
    distributed.check_batch_sizes({"teacher.training.batch_size": 32}, 2)
    with pytest.raises(ConfigError) as caught:
        distributed.check_batch_sizes({"teacher.training.batch_size": 32, "students[0].training.batch_size": 30}, 4)
    message = str(caught.value)
    assert "students[0].training.batch_size is 30" in message and "multiples of 4" in message
    assert "teacher.training" not in message, "a batch that splits evenly is not named"


def test_nodes_without_a_meeting_point_or_with_a_rank_out_of_range_are_refused():
    distributed.Nodes().check()
    distributed.Nodes(2, 1, "10.0.0.1:29500").check()
    with pytest.raises(ConfigError, match="--nnodes 2 needs --rdzv-endpoint HOST:PORT"):
        distributed.Nodes(2, 0, None).check()
    with pytest.raises(ConfigError, match="--node-rank 2 is not one of the 2 nodes; use 0 to 1"):
        distributed.Nodes(2, 2, "10.0.0.1:29500").check()


def _collectives(rank: int, store: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    cache = Path(out_dir) / "cache.txt"
    with distributed.main_process_first():
        if not cache.exists():  # rank 0 fills it first; rank 1 must find it filled
            cache.write_text(f"filled by rank {rank}")
    start, end = distributed.shard_bounds(5)
    record = {
        "world_size": distributed.world_size(),
        "is_main": distributed.is_main(),
        "broadcast": distributed.broadcast(f"from rank {rank}"),
        "shard": [start, end],
        "gathered": distributed.gather_rows(np.arange(start, end) * 10).tolist(),
        "cache": cache.read_text(),
    }
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(record))
    distributed.leave()


def test_collectives_on_two_gloo_ranks(tmp_path):
    torch.multiprocessing.spawn(_collectives, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["is_main"] for r in ranks] == [True, False]
    assert [r["broadcast"] for r in ranks] == ["from rank 0", "from rank 0"]
    assert ranks[0]["shard"][0] == 0 and ranks[0]["shard"][1] == ranks[1]["shard"][0] and ranks[1]["shard"][1] == 5
    assert ranks[0]["gathered"] == ranks[1]["gathered"] == [0, 10, 20, 30, 40]
    assert ranks[0]["cache"] == ranks[1]["cache"] == "filled by rank 0"


def test_processes_with_an_uneven_batch_fail_before_anything_starts(tmp_path, tiny_encoder_dir):
    from tests.conftest import write_sst2_like

    train = write_sst2_like(tmp_path / "train.tsv", 40, seed=1)
    dev = write_sst2_like(tmp_path / "dev.tsv", 16, seed=2)
    config = write_config(tmp_path, tiny_encoder_dir, train, dev, batch_size=14)
    result = run_cli("run", config, "--run-dir", tmp_path / "run", "--processes", "3", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: with 3 processes each global batch is split evenly across them, but teacher.training.batch_size "
        "is 16, students[0].training.batch_size is 14; use batch sizes that are multiples of 3, or another --processes"
    ]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


# integration tier: real two-process runs of the CLI ------------------------------------------------------------------


@pytest.fixture
def small_task(tmp_path) -> tuple[Path, Path]:
    from tests.conftest import write_sst2_like

    return write_sst2_like(tmp_path / "data" / "train.tsv", 400, seed=1), write_sst2_like(
        tmp_path / "data" / "dev.tsv", 64, seed=2
    )


def _steps(history: list[dict]) -> int:
    return max(int(record.get("step", 0)) for record in history if "train_runtime" in record)


@pytest.mark.integration
def test_two_process_run_splits_each_global_batch_and_rank0_alone_writes(tmp_path, tiny_encoder_dir, small_task):
    # 400 examples, global batch 16: 25 optimiser steps per epoch whatever the process count (50 if each rank
    # trained alone on batches of 8, the failure this guards against)
    config = write_config(tmp_path, tiny_encoder_dir, *small_task, epochs=2, batch_size=16)
    raw = yaml.safe_load(config.read_text())
    raw["students"][0]["alpha_cos"] = 0.0  # logits alone: the teacher-logit cache, filled by both ranks
    config.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"
    for command in ("teacher", "train"):
        result = run_cli(command, config, "--run-dir", run_dir, "--processes", "2", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("done: train") == 1, "rank 0 alone prints"
    stages = manifest(run_dir)["stages"]
    assert stages["teacher"]["environment"]["processes"] == 2
    assert stages["student:s2"]["environment"]["processes"] == 2
    record = json.loads((run_dir / "students" / "s2" / "distill.json").read_text())
    assert _steps(record["history"]) == 2 * 25
    teacher = json.loads((run_dir / "teacher" / "eval.json").read_text())
    assert _steps(teacher["history"]) == 4 * 25  # write_config gives the teacher 4 epochs at batch 16
    assert json.loads((run_dir / "students" / "s2" / "eval.json").read_text())["metrics"]["accuracy"] > 0.8
    event_files = list((run_dir / "students" / "s2" / "logs" / "tensorboard").glob("events.*"))
    assert len(event_files) == 1, "one TensorBoard writer, on rank 0"
    assert not (run_dir / "students" / "s2" / "checkpoints").exists()

    # the cache the two ranks filled, a half each, holds what one process computes, row for row
    assert record["teacher_logits"] == "cached" and record["cache"] == "miss"
    (cache_file,) = (run_dir / "cache").glob("teacher-logits-*.npy")
    teacher_dir = run_dir / "teacher"
    data = load_task_data(load_config(config).data, "sst2", 0)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    expected = predict_logits(
        AutoModelForSequenceClassification.from_pretrained(teacher_dir), tokenize(data.train, tokenizer, 32), tokenizer
    )
    np.testing.assert_allclose(np.load(cache_file), expected, atol=1e-5)


@pytest.mark.integration
def test_two_process_run_killed_mid_training_resumes_with_one_process(tmp_path, tiny_encoder_dir, small_task):
    config = write_config(tmp_path, tiny_encoder_dir, *small_task, epochs=8, batch_size=16)
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "distill", "run", str(config), "--run-dir", str(run_dir), "--processes", "2"]
    checkpoints = run_dir / "students" / "s2" / "checkpoints"
    process = start_run_until_checkpoint(command, checkpoints)
    ranks = psutil.Process(process.pid).children(recursive=True)
    assert len([rank for rank in ranks if "distill" in " ".join(rank.cmdline())]) == 2
    process.send_signal(signal.SIGKILL)  # the launcher: its ranks must die with it, not train on unseen
    process.wait()
    _, alive = psutil.wait_procs(ranks, timeout=30)
    assert not alive, "ranks outlived their killed launcher"
    assert manifest(run_dir)["stages"]["student:s2"]["status"] == "running"
    assert any(checkpoints.glob("checkpoint-*/rng_state_1.pth")), "rank 1 took part in the killed run"

    result = run_cli("run", config, "--run-dir", run_dir, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[student:s2] resuming an interrupted run" in result.stdout
    record = json.loads((run_dir / "students" / "s2" / "distill.json").read_text())
    assert record["resumed_from"] and "checkpoint-" in record["resumed_from"]
    assert _steps(record["history"]) == 8 * 25
    stages = manifest(run_dir)["stages"]
    assert all(entry["status"] == "complete" for entry in stages.values())
    assert stages["student:s2"]["environment"]["processes"] == 1


@pytest.mark.integration
def test_a_failure_on_one_rank_stops_every_rank_with_one_message(tmp_path, tiny_encoder_dir, small_task):
    config = write_config(tmp_path, tiny_encoder_dir, *small_task)
    # a teacher that cannot clear the quality gate: rank 0 refuses it after both ranks fine-tuned it
    result = run_cli(
        "run", config, "--run-dir", tmp_path / "run", "--processes", "2", "--set", "teacher.min_margin=1.0",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "min_margin" in errors[0]
    assert errors[-1].startswith("error: process 0 of 2 failed")
    assert "Traceback" not in result.stderr
    assert (tmp_path / "run" / "teacher" / "eval.json").is_file(), "a refused teacher is kept for a rerun"


@pytest.mark.integration
def test_two_process_teacher_seeds_train_every_candidate_on_both_ranks(tmp_path, tiny_encoder_dir, small_task):
    config = write_config(tmp_path, tiny_encoder_dir, *small_task)
    run_dir = tmp_path / "run"
    result = run_cli(
        "teacher", config, "--run-dir", run_dir, "--processes", "2", "--set", "teacher.seeds=[0, 1]", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("[teacher] seed 1: dev accuracy") == 1, "rank 0 alone evaluates and prints"
    teacher = json.loads((run_dir / "teacher" / "eval.json").read_text())
    assert [c["seed"] for c in teacher["candidates"]["seeds"]] == [0, 1]
    for seed in (0, 1):
        candidate = json.loads((run_dir / "teacher" / "candidates" / f"seed-{seed}" / "eval.json").read_text())
        assert _steps(candidate["history"]) == 4 * 25  # each global batch split over the two ranks
    assert manifest(run_dir)["stages"]["teacher"]["summary"]["chosen_seed"] == teacher["candidates"]["chosen_seed"]


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.integration
def test_two_nodes_on_one_machine_run_as_one_job_with_one_writer(tmp_path, tiny_encoder_dir, small_task):
    import os
    import subprocess

    from tests.conftest import REPO_ROOT

    config = write_config(tmp_path, tiny_encoder_dir, *small_task, epochs=2, batch_size=16)
    run_dir, alone = tmp_path / "run", tmp_path / "alone"
    nodes = ["--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    second = subprocess.Popen(
        [sys.executable, "-m", "distill", "run", str(config), "--run-dir", str(run_dir), *nodes, "--node-rank", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    first = run_cli("run", config, "--run-dir", run_dir, *nodes, "--node-rank", "0", cwd=tmp_path)
    out, err = second.communicate(timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 0, err[-3000:]
    assert "[teacher]" not in out and first.stdout.count("done: teacher") == 1, "rank 0, on node 0, alone prints"
    stages = manifest(run_dir)["stages"]
    assert all(entry["status"] == "complete" for entry in stages.values())
    assert stages["teacher"]["environment"]["processes"] == 2
    record = json.loads((run_dir / "students" / "s2" / "distill.json").read_text())
    assert _steps(record["history"]) == 2 * 25, "each global batch of 16 split over the two nodes"
    event_files = list((run_dir / "students" / "s2" / "logs" / "tensorboard").glob("events.*"))
    assert len(event_files) == 1, "one writer"

    result = run_cli("teacher", config, "--run-dir", alone, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli("train", config, "--run-dir", alone, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    together = json.loads((run_dir / "students" / "s2" / "eval.json").read_text())["metrics"]["accuracy"]
    single = json.loads((alone / "students" / "s2" / "eval.json").read_text())["metrics"]["accuracy"]
    standard_error = (single * (1 - single) / 64) ** 0.5
    assert abs(together - single) <= max(standard_error, 1 / 64), (together, single)
