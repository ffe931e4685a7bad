"""``teacher.seeds``: the teacher fine-tuned once per seed, the best on dev kept, each candidate equal to a single
fine-tuning with that seed (whatever random state the process started with), finished candidates not trained again
after an interruption."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import distill.teacher as teacher_module
from distill.config import Config, TeacherConfig
from distill.data import load_task_data
from distill.files import read_json
from distill.pipeline import Run
from distill.records import Candidates, CandidateScore, TeacherEval
from distill.teacher import run_teacher_stage
from tests.conftest import write_sst2_like

TRAINING = {"epochs": 4, "batch_size": 16, "learning_rate": 1e-3, "save_steps": 50, "logging_steps": 50}


def make_config(
    tmp_path, teacher_dir, seed: int = 0, teacher_seeds: list[int] | None = None, **teacher: object
) -> Config:
    train = write_sst2_like(tmp_path / "data" / "train.tsv", 400, seed=1)
    dev = write_sst2_like(tmp_path / "data" / "dev.tsv", 64, seed=2)
    return Config.model_validate(
        {
            "seed": seed,
            "data": {"train": str(train), "validation": str(dev), "max_length": 32},
            "teacher": {
                "source": str(teacher_dir),
                "min_margin": 0.0,
                "seeds": teacher_seeds,
                "training": TRAINING,
                **teacher,
            },
            "students": [{"name": "s", "num_layers": 1}],
        }
    )


def stage(config: Config, teacher_dir, process_state: int = 1234):
    torch.manual_seed(process_state)  # stands for the random state torch starts each process with
    record = run_teacher_stage(config, load_task_data(config.data, config.task), teacher_dir)
    return record.model_dump(mode="json", exclude_none=True)  # what eval.json holds


def scores_record(candidates: dict, seed: int) -> dict:
    return next(c["metrics"] for c in candidates["seeds"] if c["seed"] == seed)


def test_repeated_teacher_seeds_are_refused():
    with pytest.raises(ValueError, match="repeats a seed"):
        TeacherConfig(seeds=[1, 1])


def test_teacher_seeds_enter_the_fingerprint_only_when_set(tmp_path, tiny_encoder_dir):
    plain = make_config(tmp_path, tiny_encoder_dir)
    several = make_config(tmp_path, tiny_encoder_dir, teacher_seeds=[0, 1])
    assert plain.teacher_seeds() == [0] and several.teacher_seeds() == [0, 1]
    fingerprints = [Run(config, tmp_path / "run").teacher_fingerprint() for config in (plain, several)]
    assert fingerprints[0] != fingerprints[1]


def test_the_best_seed_on_dev_is_kept_and_each_candidate_equals_a_single_run(tmp_path, tiny_encoder_dir):
    teacher_dir = tmp_path / "teacher"
    record = stage(make_config(tmp_path, tiny_encoder_dir, teacher_seeds=[0, 1]), teacher_dir)

    candidates = record["candidates"]
    scores = {c["seed"]: c["metrics"]["accuracy"] for c in candidates["seeds"]}
    assert list(scores) == [0, 1]
    assert candidates["chosen_seed"] == max(scores, key=scores.get)
    assert record["metrics"]["accuracy"] == scores[candidates["chosen_seed"]]
    assert record["seed"] == candidates["chosen_seed"]
    chosen_logits = np.load(teacher_dir / "candidates" / f"seed-{candidates['chosen_seed']}" / "dev_logits.npy")
    np.testing.assert_allclose(np.load(teacher_dir / "dev_logits.npy"), chosen_logits, atol=1e-5)
    assert not list((teacher_dir / "candidates").glob("*/model.safetensors"))  # only the chosen weights remain
    assert (teacher_dir / "model.safetensors").is_file()
    assert read_json(teacher_dir / "eval.json")["candidates"] == candidates

    # the second candidate is the teacher that a run with `seed: 1` and no teacher.seeds fine-tunes, in another
    # process too: the new classification head does not depend on the random state the process started with
    single = stage(make_config(tmp_path, tiny_encoder_dir, seed=1), tmp_path / "single", process_state=99)
    assert "candidates" not in single and single["seed"] == 1
    np.testing.assert_allclose(
        np.load(tmp_path / "single" / "dev_logits.npy"),
        np.load(teacher_dir / "candidates" / "seed-1" / "dev_logits.npy"),
        atol=1e-5,
    )
    assert single["metrics"] == scores_record(candidates, 1)


def test_an_interrupted_selection_resumes_without_retraining_finished_seeds(tmp_path, tiny_encoder_dir, monkeypatch):
    config = make_config(tmp_path, tiny_encoder_dir, teacher_seeds=[3, 4])
    teacher_dir = tmp_path / "teacher"
    trained: list[int] = []
    real_train_model = teacher_module.train_model

    def crash_on_seed_4(*args, **kwargs):
        seed = args[7]
        if seed == 4 and not trained.count(4):
            trained.append(4)
            raise KeyboardInterrupt
        trained.append(seed)
        return real_train_model(*args, **kwargs)

    monkeypatch.setattr(teacher_module, "train_model", crash_on_seed_4)
    with pytest.raises(KeyboardInterrupt):
        stage(config, teacher_dir)
    assert (teacher_dir / "candidates" / "seed-3" / "eval.json").is_file()
    assert not (teacher_dir / "eval.json").exists()

    record = stage(config, teacher_dir)
    assert trained == [3, 4, 4]  # seed 3 was not trained again
    assert [c["seed"] for c in record["candidates"]["seeds"]] == [3, 4]


def test_learning_rate_candidates_keep_the_better_rate_and_equal_a_run_at_that_rate(tmp_path, tiny_encoder_dir):
    teacher_dir = tmp_path / "teacher"
    rates = [1e-3, 1e-6]  # the second barely moves the new head: the first is better on dev
    config = make_config(
        tmp_path, tiny_encoder_dir, learning_rates=rates, training={**TRAINING, "learning_rate": rates[0]}
    )
    assert config.teacher_candidates() == [(0, 1e-3), (0, 1e-6)]
    record = stage(config, teacher_dir)

    candidates = record["candidates"]
    scores = {c["learning_rate"]: c["metrics"]["accuracy"] for c in candidates["seeds"]}
    assert list(scores) == rates and candidates["chosen_seed"] == 0
    assert candidates["chosen_learning_rate"] == max(scores, key=scores.get)
    assert record["metrics"]["accuracy"] == max(scores.values())
    for rate in rates:
        assert (teacher_dir / "candidates" / f"seed-0-lr-{rate:g}" / "eval.json").is_file()
    chosen = teacher_dir / "candidates" / f"seed-0-lr-{candidates['chosen_learning_rate']:g}"
    np.testing.assert_allclose(np.load(teacher_dir / "dev_logits.npy"), np.load(chosen / "dev_logits.npy"), atol=1e-5)

    # the low-rate candidate is the teacher that a run at that rate alone fine-tunes
    single_training = {**TRAINING, "learning_rate": rates[1]}
    single = stage(make_config(tmp_path, tiny_encoder_dir, training=single_training), tmp_path / "single")
    assert "candidates" not in single
    np.testing.assert_allclose(
        np.load(tmp_path / "single" / "dev_logits.npy"),
        np.load(teacher_dir / "candidates" / "seed-0-lr-1e-06" / "dev_logits.npy"),
        atol=1e-5,
    )


def test_the_record_names_the_chosen_seed_and_rate():
    candidates = Candidates(
        chosen_seed=0,
        chosen_learning_rate=2e-5,
        seeds=[
            CandidateScore(seed=0, learning_rate=1e-4, metrics={"accuracy": 0.556}),
            CandidateScore(seed=0, learning_rate=2e-5, metrics={"accuracy": 0.621}),
        ],
    )
    record = TeacherEval(
        source="t", finetuned_here=True, metrics={"accuracy": 0.621}, main_metric="accuracy", candidates=candidates
    )
    assert record.line().endswith("fine-tuned here, best of 2 candidates: seed 0 at lr 2e-05")
    assert record.summary()["chosen_learning_rate"] == 2e-5
    seeds_only = Candidates(chosen_seed=1, seeds=[CandidateScore(seed=s, metrics={"accuracy": 0.5}) for s in (0, 1)])
    assert seeds_only.chosen().words() == "seed 1"


def test_the_plan_line_names_every_candidate(tmp_path, tiny_encoder_dir):
    training = {**TRAINING, "learning_rate": 1e-3}
    config = make_config(
        tmp_path, tiny_encoder_dir, teacher_seeds=[0, 1], learning_rates=[1e-3, 2e-4], training=training
    )
    line = teacher_module.plan(config, load_task_data(config.data, config.task))
    assert line.endswith(
        "4 epoch(s), batch 16, once per seed (0, 1) and learning rate (0.001, 0.0002) (the best on dev kept)"
    )
    single = make_config(tmp_path, tiny_encoder_dir, training=training)
    assert teacher_module.plan(single, load_task_data(single.data, single.task)).endswith("learning rate 0.001")
