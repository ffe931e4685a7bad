"""TinyBERT-style augmentation: deterministic per seed, only replaceable words change, the filter, the cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForMaskedLM

import distill.cache
from distill.augment import augment_rows, augment_training_set, embedding_neighbours, replaceable_ids
from distill.cache import cache_file, with_teacher_logits
from distill.config import AugmentationConfig
from distill.data import tokenize
from distill.errors import StudentError
from distill.evaluate import predict_logits
from distill.losses import NO_LABEL
from tests.conftest import WORDS, make_tiny_bert, tiny_task


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("aug_teacher"), num_layers=2)


@pytest.fixture(scope="module")
def tokenizer(teacher_dir):
    return AutoTokenizer.from_pretrained(teacher_dir)


@pytest.fixture(scope="module")
def teacher(teacher_dir, tokenizer, tmp_path_factory):
    """The random teacher with its decision threshold moved to the median training margin, so that its labels
    split about evenly and word replacements flip some of them."""
    model = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    data = tiny_task(tmp_path_factory.mktemp("aug_data"), dev_rows=8, train_rows=24)
    logits = predict_logits(model, tokenize(data.train, tokenizer, 32), tokenizer)
    with torch.no_grad():
        model.classifier.bias[1] -= float(np.median(logits[:, 1] - logits[:, 0]))
    return model


ROWS = [{"text": "the movie was good", "label": 1}, {"text": "a boring zyzzyva plot", "label": 0}]


def test_replaceable_ids_are_whole_alphabetic_words(tokenizer):
    tokens = set(tokenizer.convert_ids_to_tokens(replaceable_ids(tokenizer).tolist()))
    assert tokens == set(WORDS)


def test_embedding_neighbours_by_hand():
    embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, -0.5]])
    neighbours = embedding_neighbours(embeddings, [0, 2], np.array([0, 1, 2, 3]), k=2)
    assert neighbours == {0: [1, 2], 2: [1, 0]}


def test_augmentation_is_deterministic_for_a_seed(tokenizer, teacher):
    cfg = AugmentationConfig(enabled=True, copies=4, probability=0.5, candidates=3)
    embeddings = teacher.get_input_embeddings().weight
    first = augment_rows(ROWS, tokenizer, cfg, 7, embeddings)
    assert first == augment_rows(ROWS, tokenizer, cfg, 7, embeddings)
    assert first != augment_rows(ROWS, tokenizer, cfg, 8, embeddings)


def test_only_single_piece_words_change_and_copies_are_new(tokenizer, teacher):
    cfg = AugmentationConfig(enabled=True, copies=5, probability=1.0, candidates=3)
    rows, sources = augment_rows(ROWS, tokenizer, cfg, 0, teacher.get_input_embeddings().weight)
    assert rows and len(rows) == len(sources) and sources == sorted(sources)
    for row, source in zip(rows, sources, strict=True):
        original, new = ROWS[source]["text"].split(), row["text"].split()
        assert len(new) == len(original) and row["label"] == ROWS[source]["label"]
        assert row["text"] != ROWS[source]["text"]
        for before, after in zip(original, new, strict=True):
            if before == "zyzzyva":  # not in the vocabulary: [UNK], never replaced
                assert after == before
            else:  # probability 1: every known word is replaced by a different word
                assert after in WORDS and after != before
    assert len({row["text"] for row in rows}) == len(rows)  # no duplicate copies


def test_filter_drops_copies_the_teacher_labels_differently_and_the_cache_is_reused(
    tmp_path, tokenizer, teacher, teacher_dir
):
    data = tiny_task(tmp_path / "data", dev_rows=8, train_rows=24)
    cfg = AugmentationConfig(enabled=True, copies=3, probability=0.6, candidates=4)
    augmented, record, logits = augment_training_set(
        data, teacher, teacher_dir, tokenizer, cfg, 32, 0, tmp_path / "cache"
    )
    assert record["cache"] == "miss"
    assert record["generated"] == record["kept"] + record["dropped_disagreeing"]
    assert record["dropped_disagreeing"] > 0  # a random teacher flips some copies
    assert len(augmented) == len(data.train) + record["kept"]
    kept = augmented.select(range(len(data.train), len(augmented)))
    # every kept copy gets the teacher's label of some source row with the same gold label
    copy_logits = predict_logits(teacher, tokenize(kept, tokenizer, 32), tokenizer)
    source_logits = predict_logits(teacher, tokenize(data.train, tokenizer, 32), tokenizer)
    rows, sources = augment_rows(data.train.to_list(), tokenizer, cfg, 0, teacher.get_input_embeddings().weight)
    by_text = {row["text"]: source for row, source in zip(rows, sources, strict=True)}
    for row, row_logits in zip(kept.to_list(), copy_logits, strict=True):
        assert row_logits.argmax() == source_logits[by_text[row["text"]]].argmax()
    # the filter's teacher logits cover the whole returned set, row for row, for the logit cache to reuse
    assert np.allclose(logits, predict_logits(teacher, tokenize(augmented, tokenizer, 32), tokenizer), atol=1e-5)

    again, hit, logits_again = augment_training_set(
        data, teacher, teacher_dir, tokenizer, cfg, 32, 0, tmp_path / "cache"
    )
    assert hit["cache"] == "hit" and again.to_list() == augmented.to_list()
    assert np.array_equal(logits_again, logits)
    changed = cfg.model_copy(update={"copies": 2})
    _, other, _ = augment_training_set(data, teacher, teacher_dir, tokenizer, changed, 32, 0, tmp_path / "cache")
    assert other["cache"] == "miss" and other["key"] != record["key"]
    # copies labelled by the teacher under bf16 autocast (a bf16 student's) are kept apart from fp32 labels
    _, low, low_logits = augment_training_set(
        data, teacher, teacher_dir, tokenizer, cfg, 32, 0, tmp_path / "cache", bf16=True
    )
    assert low["cache"] == "miss" and low["key"] != record["key"] and low["teacher_precision"] == "bf16"
    assert record["teacher_precision"] == "fp32"
    assert low_logits.shape[1] == logits.shape[1] and not np.array_equal(low_logits[: len(data.train)], logits[:24])


def test_the_filter_runs_the_teacher_on_the_originals_once_for_every_seed(
    tmp_path, tokenizer, teacher, teacher_dir, monkeypatch
):
    data = tiny_task(tmp_path / "data", dev_rows=8, train_rows=16)
    cfg = AugmentationConfig(enabled=True, copies=2, probability=0.6, candidates=4)
    originals = tokenize(data.train, tokenizer, 32)
    seen = []
    original_predict = distill.cache.predict_logits
    monkeypatch.setattr(
        distill.cache,
        "predict_logits",
        lambda model, rows, *a, **k: seen.append(len(rows)) or original_predict(model, rows, *a, **k),
    )
    for seed in (0, 1):
        _, record, logits = augment_training_set(data, teacher, teacher_dir, tokenizer, cfg, 32, seed, tmp_path / "c")
        assert record["cache"] == "miss"  # a new augmented set for each seed...
        assert np.allclose(logits[: len(data.train)], predict_logits(teacher, originals, tokenizer), atol=1e-5)
    assert seen == [len(data.train)]  # ...but the teacher ran over the originals once
    cached = np.load(cache_file(originals, teacher_dir, tmp_path / "c"))
    assert np.allclose(cached, predict_logits(teacher, originals, tokenizer), atol=1e-5)
    # the same file that the logit cache of a student trained on the originals reads
    _, info = with_teacher_logits(originals, teacher, teacher_dir, tokenizer, tmp_path / "c")
    assert info["cache"] == "hit" and seen == [len(data.train)]


def test_without_the_filter_every_copy_is_kept(tmp_path, tokenizer, teacher, teacher_dir):
    data = tiny_task(tmp_path / "data", dev_rows=8, train_rows=12)
    cfg = AugmentationConfig(enabled=True, copies=2, filter_disagreeing=False)
    augmented, record, logits = augment_training_set(data, teacher, teacher_dir, tokenizer, cfg, 32, 0, tmp_path / "c")
    assert record["dropped_disagreeing"] == 0 and record["kept"] == record["generated"] > 0
    assert logits is None  # no filter, no teacher pass: the logit cache computes them


def test_masked_lm_candidates(tmp_path, tokenizer, teacher, teacher_dir):
    torch.manual_seed(0)
    mlm = BertForMaskedLM(
        BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    )
    mlm.save_pretrained(tmp_path / "mlm")
    data = tiny_task(tmp_path / "data", dev_rows=8, train_rows=8)
    cfg = AugmentationConfig(enabled=True, copies=2, candidates=3, mlm_model=str(tmp_path / "mlm"))
    _, record, _ = augment_training_set(data, teacher, teacher_dir, tokenizer, cfg, 32, 0, tmp_path / "c")
    assert record["candidates_from"].startswith("masked LM") and record["generated"] > 0

    wrong = BertForMaskedLM(BertConfig(vocab_size=99, hidden_size=16, num_hidden_layers=1, num_attention_heads=2))
    wrong.save_pretrained(tmp_path / "wrong")
    bad = cfg.model_copy(update={"mlm_model": str(tmp_path / "wrong")})
    with pytest.raises(StudentError, match="vocabulary of 99"):
        augment_training_set(data, teacher, teacher_dir, tokenizer, bad, 32, 0, tmp_path / "c2")


def pair_task(directory, rows: int, regression: bool):
    """A sentence-pair task over the tiny vocabulary: classes (``yes``/``no``) or scores from 0 to 5."""
    import random

    from distill.config import DataConfig
    from distill.data import load_task_data

    rng = random.Random(3)

    def split(name: str, count: int):
        lines = ["sentence1\tsentence2\tlabel"]
        for _ in range(count):
            first, second = (" ".join(rng.sample(WORDS, rng.randint(3, 6))) for _ in range(2))
            label = f"{rng.uniform(0, 5):.2f}" if regression else rng.choice(["yes", "no"])
            lines.append(f"{first}\t{second}\t{label}")
        path = directory / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    cfg = DataConfig(
        train=split("train", rows), validation=split("dev", 4), text_column="sentence1",
        text_pair_column="sentence2", label_column="label",
        problem_type="regression" if regression else "classification",
    )  # fmt: skip
    return load_task_data(cfg, None)


def test_pairs_augment_both_sentences_and_copies_have_no_hard_label(tmp_path, tokenizer, teacher, teacher_dir):
    data = pair_task(tmp_path / "data", rows=6, regression=False)
    cfg = AugmentationConfig(enabled=True, copies=3, probability=0.7, candidates=4, filter_disagreeing=False)
    augmented, record, _ = augment_training_set(data, teacher, teacher_dir, tokenizer, cfg, 32, 0, tmp_path / "c")
    copies = augmented.select(range(len(data.train), len(augmented))).to_list()
    assert len(copies) == record["kept"] > 0
    originals = data.train.to_list()
    assert any(copy["text"] not in {row["text"] for row in originals} for copy in copies)
    assert any(copy["text_pair"] not in {row["text_pair"] for row in originals} for copy in copies)
    assert {copy["label"] for copy in copies} == {NO_LABEL}
    assert augmented.select(range(len(data.train)))["label"] == data.train["label"]  # the originals keep theirs


def test_regression_copies_are_scored_by_the_teacher_not_by_their_source(tmp_path, tokenizer, teacher_dir):
    data = pair_task(tmp_path / "data", rows=6, regression=True)
    assert data.is_regression
    scorer = AutoModelForSequenceClassification.from_pretrained(
        make_tiny_bert(tmp_path / "scorer", num_labels=1, num_layers=2)
    )
    cfg = AugmentationConfig(enabled=True, copies=2, probability=0.7, candidates=4)
    augmented, record, known = augment_training_set(data, scorer, teacher_dir, tokenizer, cfg, 32, 0, tmp_path / "c")
    assert known is None and record["dropped_disagreeing"] == 0  # no class to disagree on: every copy is kept
    copies = augmented.select(range(len(data.train), len(augmented)))
    assert len(copies) == record["kept"] > 0 and all(np.isnan(copies["label"]))
    rows, info = with_teacher_logits(tokenize(augmented, tokenizer, 32), scorer, teacher_dir, tokenizer, tmp_path / "c")
    expected = predict_logits(scorer, tokenize(augmented, tokenizer, 32), tokenizer)
    assert info["cache"] == "miss" and np.allclose(np.asarray(rows["teacher_logits"]), expected, atol=1e-5)
