"""Several seeds per student, best-seed selection, statistics against twin and teacher, and ``distill compare``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from click.testing import CliRunner

from distill.cli import cli
from distill.config import load_config
from distill.pipeline import run_pipeline
from tests.conftest import write_sst2_like


def write_config(tmp_path: Path, teacher_dir: Path, seeds: list[int]) -> Path:
    train = write_sst2_like(tmp_path / "data" / "train.tsv", 400, seed=1)
    dev = write_sst2_like(tmp_path / "data" / "dev.tsv", 64, seed=2)
    training = {"epochs": 1, "batch_size": 32, "learning_rate": 1e-3, "save_steps": 50, "logging_steps": 5}
    config = {
        "task": "sst2",
        "seeds": seeds,
        "data": {"train": str(train), "validation": str(dev), "max_length": 32},
        "teacher": {
            "source": str(teacher_dir),
            "min_margin": 0.0,
            "training": {"epochs": 4, "batch_size": 16, "learning_rate": 1e-3, "save_steps": 50},
        },
        "students": [{"name": "s1", "num_layers": 1, "baseline": True, "training": training}],
        "export": {"int8": {"enabled": False}, "optimize": False},
        "bench": {"batch_sizes": [1], "seq_lengths": [16], "iterations": 3, "warmup": 1, "replay_batch_sizes": [8]},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_seeds_select_the_best_and_report_intervals(tmp_path, tiny_encoder_dir, capsys):
    run_dir = tmp_path / "run"
    run_pipeline(load_config(write_config(tmp_path, tiny_encoder_dir, [0, 1])), run_dir)
    student = run_dir / "students" / "s1"
    records = {seed: json.loads((student / "seeds" / str(seed) / "eval.json").read_text()) for seed in (0, 1)}
    evaluation = json.loads((student / "eval.json").read_text())
    best = max((0, 1), key=lambda seed: (records[seed]["metrics"]["accuracy"], -seed))
    assert evaluation["selected_seed"] == best
    assert evaluation["seeds"] == {str(seed): records[seed]["metrics"] for seed in (0, 1)}
    assert np.array_equal(
        np.load(student / "dev_logits.npy"), np.load(student / "seeds" / str(best) / "dev_logits.npy")
    )
    assert (student / "model.safetensors").read_bytes() == (
        student / "seeds" / str(best) / "model.safetensors"
    ).read_bytes()
    assert json.loads((student / "seeds" / "1" / "distill.json").read_text())["seed"] == 1

    statistics = json.loads((run_dir / "statistics.json").read_text())
    entry = statistics["students"]["s1"]
    accuracies = [records[seed]["metrics"]["accuracy"] for seed in (0, 1)]
    assert entry["metrics"]["accuracy"]["mean"] == np.mean(accuracies)
    assert entry["seeds"] == ["0", "1"] and entry["twin"] == "s1-twin"
    assert entry["gain_over_twin"]["low"] <= entry["gain_over_twin"]["estimate"] <= entry["gain_over_twin"]["high"]
    assert "distillation" in entry["gain_over_twin"]["verdict"]
    report = (run_dir / "report.md").read_text()
    assert "## Does distillation pay?" in report and "`s1` vs its twin `s1-twin`" in report

    # one more seed trains only that seed; the others are reused
    capsys.readouterr()
    run_pipeline(load_config(write_config(tmp_path, tiny_encoder_dir, [0, 1, 2])), run_dir)
    out = capsys.readouterr().out
    assert "[student:s1@0] complete, inputs unchanged: skipped" in out
    assert "[student:s1@2] complete" not in out and (student / "seeds" / "2" / "eval.json").is_file()

    result = CliRunner().invoke(cli, ["compare", str(run_dir), str(run_dir), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    assert result.output.count("| run | teacher |") == 2
    comparison = json.loads((tmp_path / "cmp.json").read_text())
    assert [row["model"] for row in comparison["rows"]] == ["teacher", "s1", "s1-twin"] * 2
    assert (tmp_path / "cmp.md").read_text() == result.output


def test_compare_names_a_run_without_results(tmp_path):
    result = CliRunner().invoke(cli, ["compare", str(tmp_path)])
    assert result.exit_code != 0
    assert "statistics.json does not exist; run `distill report`" in str(result.exception)


def _load_benchmark(name: str):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_per_seed_runs_merge_into_the_statistics_of_one_several_seed_run(tmp_path, tiny_encoder_dir, monkeypatch):
    """benchmarks/merge_seed_runs.py: runs of one seed each, sharing a teacher, give the statistics of one run."""
    from distill.data import load_task_data
    from distill.report.statistics import run_statistics

    together = tmp_path / "together"
    config = load_config(write_config(tmp_path, tiny_encoder_dir, [0, 1]))
    run_pipeline(config, together, stages=("teacher", "train"))
    labels = np.asarray(load_task_data(config.data, config.task, config.seed).validation["label"])
    expected = run_statistics(together, labels, ["accuracy"])

    apart = []
    for seed in (0, 1):
        overrides = [f"seeds=[{seed}]", f"teacher.source={together / 'teacher'}"]
        run_pipeline(
            load_config(write_config(tmp_path, tiny_encoder_dir, [0, 1]), overrides),
            tmp_path / f"seed{seed}",
            stages=("teacher", "train"),
        )
        apart.append(str(tmp_path / f"seed{seed}"))
    merge = _load_benchmark("merge_seed_runs")
    out = tmp_path / "merged"
    arguments = ["merge_seed_runs", "--out", str(out), *apart, "--data-validation", str(config.data.validation)]
    monkeypatch.setattr("sys.argv", arguments)
    merge.main()

    merged = json.loads((out / "statistics.json").read_text())
    for name in ("s1", "s1-twin"):
        assert merged["students"][name]["seeds"] == ["0", "1"]
        assert merged["students"][name]["metrics"] == expected["students"][name]["metrics"]
    assert merged["students"]["s1"]["gain_over_twin"] == expected["students"]["s1"]["gain_over_twin"]
    assert "`s1` vs its twin `s1-twin`" in (out / "statistics.md").read_text()

    # a run of several seeds merges into the same (each of its seeds is brought over)
    again = tmp_path / "again"
    monkeypatch.setattr("sys.argv", ["merge_seed_runs", "--out", str(again), str(together), "--data-validation",
                                     str(config.data.validation)])  # fmt: skip
    merge.main()
    remerged = json.loads((again / "statistics.json").read_text())
    assert remerged["students"]["s1"]["metrics"] == expected["students"]["s1"]["metrics"]
    assert remerged["students"]["s1"]["gain_over_twin"] == expected["students"]["s1"]["gain_over_twin"]

    # a merged run has no benchmark: `distill compare` still lines it up on accuracy, latency and size n/a
    result = CliRunner().invoke(cli, ["compare", str(out)])
    assert result.exit_code == 0, result.output
    assert "| merged | s1 | accuracy" in result.output and "| n/a | n/a | n/a |" in result.output
