"""Shared fixtures: tiny random BERT classifiers with a tiny WordPiece vocabulary, and tiny SST-2/RTE-like files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
GLUE_DIR = REPO_ROOT.parent / "shared" / "data" / "glue"

WORDS = [
    "good",
    "great",
    "fine",
    "nice",
    "love",
    "best",
    "fun",
    "happy",
    "charming",
    "moving",
    "bad",
    "awful",
    "boring",
    "dull",
    "worst",
    "hate",
    "sad",
    "ugly",
    "poor",
    "weak",
    "the",
    "a",
    "an",
    "it",
    "is",
    "was",
    "movie",
    "film",
    "story",
    "plot",
    "actor",
    "this",
    "that",
    "and",
    "but",
    "not",
    "very",
    "really",
    "so",
    "too",
    "of",
    "to",
    "in",
]
POSITIVE = WORDS[:10]
NEGATIVE = WORDS[10:20]


def make_tokenizer(directory: Path):
    """A WordPiece BertTokenizer over a few dozen whole words, saved in ``directory``."""
    from transformers import BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(directory)
    return tokenizer


def make_tiny_bert(directory: Path, num_labels: int = 2, num_layers: int = 4, with_head: bool = True, seed: int = 0):
    """Save a random BERT (hidden 32, 4 heads) with a classification head, or a bare encoder without one."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    tokenizer = make_tokenizer(directory)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=num_labels,
    )
    model = BertForSequenceClassification(config) if with_head else BertModel(config)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A saved tiny random BERT classifier (2 labels, 4 layers) with its tokenizer."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """A saved tiny random BERT encoder without a classification head (like the bundled teacher)."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_encoder"), with_head=False)


def write_sst2_like(path: Path, rows: int, seed: int = 0) -> Path:
    """A GLUE-format TSV (``sentence\\tlabel``) whose label is learnable from the words."""
    import random

    rng = random.Random(seed)
    lines = ["sentence\tlabel"]
    for _ in range(rows):
        label = rng.randint(0, 1)
        pool = POSITIVE if label else NEGATIVE
        words = [rng.choice(pool) for _ in range(rng.randint(1, 3))] + rng.sample(WORDS[20:], rng.randint(2, 6))
        rng.shuffle(words)
        lines.append(" ".join(words) + " \t" + str(label))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tiny_tinybert_student(intermediate: dict, prediction: dict) -> dict:
    """A config entry for a TinyBERT-style student ``tiny`` (2 layers x 16, 2 heads) with its twin, for the tiny
    teachers here: ``intermediate`` and ``prediction`` are its two stages' training settings."""
    return {
        "name": "tiny",
        "recipe": "tinybert",
        "baseline": True,
        "num_layers": 2,
        "hidden_size": 16,
        "num_attention_heads": 2,
        "intermediate_size": 48,
        "intermediate": {"training": intermediate},
        "prediction": {"training": prediction},
    }


@pytest.fixture
def sst2_like(tmp_path) -> tuple[Path, Path]:
    """Tiny train/dev TSVs in SST-2's format."""
    return write_sst2_like(tmp_path / "data" / "train.tsv", 96, seed=1), write_sst2_like(
        tmp_path / "data" / "dev.tsv", 32, seed=2
    )


def tiny_task(directory: Path, dev_rows: int, train_rows: int = 16):
    """A :class:`distill.data.TaskData` over fresh SST-2-like train and dev files written in ``directory``."""
    from distill.config import DataConfig
    from distill.data import load_task_data

    splits = DataConfig(
        train=write_sst2_like(directory / "train.tsv", train_rows, seed=1),
        validation=write_sst2_like(directory / "dev.tsv", dev_rows, seed=2),
    )
    return load_task_data(splits, "sst2")


def tokenised_dev(directory: Path, tokenizer_dir: Path, dev_rows: int):
    """The tokenised dev split (max length 32) of :func:`tiny_task`, with the tokenizer saved in ``tokenizer_dir``."""
    from transformers import AutoTokenizer

    from distill.data import tokenize

    return tokenize(tiny_task(directory, dev_rows).validation, AutoTokenizer.from_pretrained(tokenizer_dir), 32)


def start_run_until_checkpoint(command: list[str], checkpoints: Path, timeout: float = 300):
    """Start ``python -m distill ...`` (``command``) and return its process once a complete checkpoint exists in
    ``checkpoints``, so that the caller can kill it mid-training."""
    import subprocess
    import time

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and not any(checkpoints.glob("checkpoint-*/trainer_state.json")):
        assert process.poll() is None, "the run ended before a checkpoint was written"
        time.sleep(0.2)
    time.sleep(0.5)
    return process
