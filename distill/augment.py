"""TinyBERT-style data augmentation: new training examples made by replacing words with similar words.

For every example, ``copies`` new versions are drawn. Each whitespace word that is a single word piece of the
teacher's vocabulary is replaced, with probability ``probability``, by one of its ``candidates`` candidates
chosen uniformly:
- with ``mlm_model`` set (a masked LM sharing the teacher's vocabulary): the MLM's top predictions for that word
  masked in its sentence (computed once per word position, batched);
- otherwise: its nearest neighbours by cosine similarity in the teacher's word-embedding matrix.
Words that are several word pieces, punctuation and special tokens are kept. Copies identical to their source
are dropped; with ``filter_disagreeing`` (classification), copies that the teacher labels differently from its
label of the source are dropped too. Every choice comes from a generator seeded by (seed, example, copy), so the
result does not depend on batching. The augmented set is cached on disk, keyed by the data, the teacher and the
settings, with the teacher's logits that the filter computed for the whole set, so that prediction-layer
distillation does not run the teacher over it a second time. The filter reads the teacher's logits on the
original rows from the shared logit cache (``distill.cache``): they are the same for every seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForMaskedLM, PreTrainedModel, PreTrainedTokenizerBase

from distill.cache import cache_file, cached_logits, teacher_pass
from distill.config import AugmentationConfig
from distill.data import TaskData, tokenize
from distill.errors import StudentError
from distill.evaluate import predict_logits
from distill.files import atomic_dir, fingerprint, read_json, weights_digest, write_json
from distill.losses import NO_LABEL

TEXT_COLUMNS = ("text", "text_pair")
TEACHER_LOGITS_FILE = "teacher_logits.npy"


def replaceable_ids(tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """Vocabulary ids that may stand in for a word: alphabetic whole-word pieces (no ``##``, no specials)."""
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_ids)
    return np.array(
        sorted(i for token, i in vocab.items() if token.isalpha() and i not in special and not token.startswith("##"))
    )


def _single_piece(word: str, tokenizer: PreTrainedTokenizerBase, allowed: set[int]) -> int | None:
    pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
    return pieces[0] if len(pieces) == 1 and pieces[0] in allowed else None


def embedding_neighbours(
    embeddings: torch.Tensor, word_ids: list[int], pool: np.ndarray, k: int, chunk: int = 1024
) -> dict[int, list[int]]:
    """The ``k`` nearest ids in ``pool`` to each of ``word_ids`` by cosine similarity of ``embeddings`` rows,
    excluding the word itself."""
    unit = torch.nn.functional.normalize(embeddings.detach().float().cpu(), dim=-1)
    pool_t = torch.as_tensor(pool)
    candidates = unit[pool_t]
    neighbours: dict[int, list[int]] = {}
    for start in tqdm(range(0, len(word_ids), chunk), desc="embedding neighbours", leave=False):
        ids = word_ids[start : start + chunk]
        similarity = unit[torch.as_tensor(ids)] @ candidates.T
        similarity[pool_t[None, :] == torch.as_tensor(ids)[:, None]] = -2.0  # never the word itself
        top = similarity.topk(min(k, len(pool) - 1), dim=-1).indices
        for word, row in zip(ids, top.tolist(), strict=True):
            neighbours[word] = [int(pool[j]) for j in row]
    return neighbours


@torch.inference_mode()
def mlm_candidates(
    mlm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sentences: list[list[str]],
    positions: list[tuple[int, int]],
    pool: np.ndarray,
    k: int,
    batch_size: int,
) -> dict[tuple[int, int], list[int]]:
    """For each ``(sentence, word)`` position, the masked LM's top ``k`` ids from ``pool`` for that word masked."""
    mlm.eval()
    allowed = torch.full((mlm.config.vocab_size,), float("-inf"))
    allowed[torch.as_tensor(pool)] = 0.0
    result: dict[tuple[int, int], list[int]] = {}
    for start in tqdm(range(0, len(positions), batch_size), desc="masked-LM candidates", leave=False):
        batch = positions[start : start + batch_size]
        texts = []
        for sentence, word in batch:
            words = list(sentences[sentence])
            words[word] = tokenizer.mask_token
            texts.append(" ".join(words))
        encoded = tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
        logits = mlm(**encoded).logits
        for row, (sentence, word) in enumerate(batch):
            masked = (encoded["input_ids"][row] == tokenizer.mask_token_id).nonzero()
            if len(masked) == 0:  # truncated away
                continue
            scores = logits[row, masked[0, 0]] + allowed
            original = tokenizer.convert_tokens_to_ids(sentences[sentence][word])
            scores[original] = float("-inf")
            result[(sentence, word)] = scores.topk(k).indices.tolist()
    return result


def _source_rows(train: datasets.Dataset) -> list[dict[str, Any]]:
    columns = [c for c in (*TEXT_COLUMNS, "label") if c in train.column_names]
    return train.select_columns(columns).to_list()


def augment_rows(
    rows: list[dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    cfg: AugmentationConfig,
    seed: int,
    embeddings: torch.Tensor,
    mlm: PreTrainedModel | None = None,
) -> tuple[list[dict[str, Any]], list[int]]:
    """``cfg.copies`` augmented versions of every row that differ from it; returns them and their source index."""
    pool = replaceable_ids(tokenizer)
    allowed = set(pool.tolist())
    columns = [c for c in TEXT_COLUMNS if c in rows[0]]
    sentences: list[list[str]] = []  # one per (row, column)
    for row in rows:
        sentences += [str(row[c]).split() for c in columns]
    piece: dict[str, int | None] = {}
    slots: list[list[tuple[int, int]]] = []  # per sentence: (word index, token id) of replaceable words
    for words in sentences:
        for word in words:
            if word not in piece:
                piece[word] = _single_piece(word, tokenizer, allowed)
        slots.append([(j, piece[w]) for j, w in enumerate(words) if piece[w] is not None])
    if mlm is not None:
        positions = [(s, j) for s, sentence_slots in enumerate(slots) for j, _ in sentence_slots]
        by_position = mlm_candidates(mlm, tokenizer, sentences, positions, pool, cfg.candidates, cfg.batch_size)
        lookup = lambda s, j, token: by_position.get((s, j), [])  # noqa: E731
    else:
        words = sorted({token for sentence_slots in slots for _, token in sentence_slots})
        neighbours = embedding_neighbours(embeddings, words, pool, cfg.candidates)
        lookup = lambda s, j, token: neighbours[token]  # noqa: E731
    augmented, sources = [], []
    for index, row in enumerate(tqdm(rows, desc="augmenting", leave=False)):
        seen = set()
        for copy in range(cfg.copies):
            rng = np.random.default_rng([seed, index, copy])
            new = dict(row)
            for offset, column in enumerate(columns):
                s = index * len(columns) + offset
                words = list(sentences[s])
                for j, token in slots[s]:
                    options = lookup(s, j, token)
                    if options and rng.random() < cfg.probability:
                        words[j] = tokenizer.convert_ids_to_tokens(int(options[rng.integers(len(options))]))
                new[column] = " ".join(words)
            key = tuple(new[c] for c in columns)
            if (
                key != tuple(" ".join(sentences[index * len(columns) + o]) for o in range(len(columns)))
                and key not in seen
            ):
                seen.add(key)
                augmented.append(new)
                sources.append(index)
    return augmented, sources


def augment_training_set(
    data: TaskData,
    teacher: PreTrainedModel,
    teacher_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    cfg: AugmentationConfig,
    max_length: int,
    seed: int,
    cache_dir: Path,
    bf16: bool = False,
) -> tuple[datasets.Dataset, dict[str, Any], np.ndarray | None]:
    """The training split plus its kept augmented copies, a record of what was generated and dropped, and the
    teacher's logits on that set, row for row (None without ``filter_disagreeing``, which is what computes them).

    Cached in ``cache_dir/augment-KEY`` where KEY hashes the training rows, the teacher's weights, the settings
    and the seed (and bf16, when the teacher labels the copies under bf16 autocast); a cache hit skips the work.
    """
    rows = _source_rows(data.train)
    precision = ["bf16"] if bf16 else []  # fp32 keys are those of earlier versions
    key = fingerprint("augment", rows, weights_digest(teacher_dir), cfg.model_dump(), seed, max_length, *precision)
    target = cache_dir / f"augment-{key}"
    if (target / "record.json").is_file():
        record = read_json(target / "record.json")
        augmented = datasets.load_from_disk(str(target / "rows"))
        logits_file = target / TEACHER_LOGITS_FILE
        return (
            datasets.concatenate_datasets([data.train, _without_labels(augmented.cast(data.train.features))]),
            {**record, "cache": "hit"},
            np.load(logits_file) if logits_file.is_file() else None,
        )
    mlm = None
    if cfg.mlm_model is not None:
        try:
            mlm = AutoModelForMaskedLM.from_pretrained(cfg.mlm_model, use_safetensors=True)
        except (OSError, ValueError) as err:
            raise StudentError(
                f"augmentation.mlm_model {cfg.mlm_model!r} could not be loaded as a masked LM ({err}); "
                "give a local directory or hub id of a BertForMaskedLM, or remove mlm_model to use embedding neighbours"
            ) from None
        if mlm.config.vocab_size != len(tokenizer):
            raise StudentError(
                f"augmentation.mlm_model has a vocabulary of {mlm.config.vocab_size} but the teacher's tokenizer has "
                f"{len(tokenizer)}; use a masked LM with the teacher's vocabulary"
            )
    embeddings = teacher.get_input_embeddings().weight
    augmented, sources = augment_rows(rows, tokenizer, cfg, seed, embeddings, mlm)
    generated = len(augmented)
    dropped = 0
    teacher_logits = None
    if cfg.filter_disagreeing and not data.is_regression and augmented:
        # the originals' logits are the same for every seed and every student: the shared logit cache keeps them
        originals = tokenize(data.train, tokenizer, max_length)
        source_logits, _ = cached_logits(
            cache_file(originals, teacher_dir, cache_dir, bf16),
            lambda: teacher_pass(teacher, originals, tokenizer, cfg.batch_size, bf16=bf16),
        )
        new = datasets.Dataset.from_list(augmented, features=data.train.features)
        new_set = tokenize(new, tokenizer, max_length)
        new_logits = predict_logits(teacher, new_set, tokenizer, cfg.batch_size, desc="teacher on augmented", bf16=bf16)
        keep = new_logits.argmax(-1) == source_logits[np.asarray(sources)].argmax(-1)
        dropped = int((~keep).sum())
        augmented = [row for row, kept in zip(augmented, keep, strict=True) if kept]
        teacher_logits = np.concatenate([source_logits, new_logits[keep]])
    record = {
        "source_examples": len(rows),
        "copies": cfg.copies,
        "generated": generated,
        "dropped_disagreeing": dropped,
        "kept": len(augmented),
        "candidates_from": "masked LM " + str(cfg.mlm_model)
        if mlm is not None
        else "teacher word-embedding neighbours",
        "filter": "teacher label of copy == teacher label of source" if cfg.filter_disagreeing else "none",
        "teacher_precision": "bf16" if bf16 else "fp32",
        "key": key,
    }
    table = datasets.Dataset.from_list(augmented, features=data.train.features) if augmented else data.train.select([])
    with atomic_dir(target) as tmp:
        table.save_to_disk(str(tmp / "rows"))
        if teacher_logits is not None:
            np.save(tmp / TEACHER_LOGITS_FILE, teacher_logits)
        write_json(tmp / "record.json", record)
    return (
        datasets.concatenate_datasets([data.train, _without_labels(table)]),
        {**record, "cache": "miss"},
        teacher_logits,
    )


def _without_labels(copies: datasets.Dataset) -> datasets.Dataset:
    """The augmented copies with their hard label replaced by :data:`NO_LABEL` (NaN for regression scores): a copy
    keeps its source's label only in the cache, and learns from the teacher's outputs alone."""
    regression = copies.features["label"].dtype.startswith("float")
    empty = [float("nan") if regression else NO_LABEL] * len(copies)
    return copies.remove_columns("label").add_column("label", empty, feature=copies.features["label"])
