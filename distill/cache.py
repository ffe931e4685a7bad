"""Teacher logits computed once per (teacher weights, tokenised training inputs) and kept on disk.

Prediction-layer distillation (logit KD with no hidden-state or attention term) needs nothing from the teacher
but its logits on each training example, and the teacher is frozen and run in eval mode, so they are the same in
every epoch and for every student. They are computed once, in length-sorted batches, saved as
``RUN/cache/teacher-logits-KEY.npy`` and attached to the training set as a column; a change of teacher weights,
data, tokenizer or ``max_length`` changes the key. A student trained in bf16 has them computed under bf16 autocast
too (2.6x faster on an AMX CPU, logits within 1e-3 of fp32's), kept under their own key. Intermediate-layer
objectives (DistilBERT's cosine term, TinyBERT's stage 1) need the teacher's hidden states and attention maps, which
are too large to store for every example (for SST-2 and MiniLM-L6, about 67k x 7 x seq x 384 floats), so they run
the teacher online.
In a data-parallel run the ranks compute the logits in parallel, each a contiguous share of the training set.
A cache file that does not load (cut short by a full disk, say) is removed and rebuilt, with one line saying so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distill import distributed
from distill.evaluate import MODEL_INPUTS, predict_logits
from distill.files import save_array, weights_digest
from distill.train import TEACHER_LOGITS


def inputs_digest(dataset: Dataset) -> str:
    """SHA-256 (16 hex digits) over every model-input column of a tokenised dataset, row by row."""
    digest = hashlib.sha256()
    for column in (c for c in MODEL_INPUTS if c in dataset.column_names):
        digest.update(column.encode())
        for row in dataset[column]:
            digest.update(np.asarray(row, dtype=np.int64).tobytes())
            digest.update(b"|")
    return digest.hexdigest()[:16]


def cache_file(train_set: Dataset, teacher_dir: Path, cache_dir: Path, bf16: bool = False) -> Path:
    """Where the teacher's logits on ``train_set`` are kept: keyed by the teacher's weights, the input rows and,
    when computed under bf16 autocast, the precision (fp32 keys are those of earlier versions)."""
    precision = ":bf16" if bf16 else ""
    key = f"{weights_digest(teacher_dir)}:{inputs_digest(train_set)}{precision}"
    key = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir / f"teacher-logits-{key}.npy"


def teacher_pass(
    teacher: PreTrainedModel,
    rows: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int,
    show: bool = True,
    bf16: bool = False,
) -> np.ndarray:
    """The teacher's logits on ``rows``, as the cache stores them (with a progress bar when ``show``)."""
    desc = "teacher logits (cached once)" if show else None
    return predict_logits(teacher, rows, tokenizer, batch_size, desc=desc, bf16=bf16)


def read_cache(path: Path, rows: int | None = None) -> np.ndarray | None:
    """The logits cached at ``path``, ``(rows, num_labels)``; or None when there are none, or when the file does not
    load or holds another shape (it is then removed, with one line saying so, and the caller rebuilds it)."""
    if not path.is_file():
        return None
    try:
        logits = np.load(path)
        problem = None
        if logits.ndim != 2 or not np.issubdtype(logits.dtype, np.floating):
            problem = f"holds a {logits.dtype} array of shape {logits.shape}, not logits"
        elif rows is not None and len(logits) != rows:
            problem = f"holds {len(logits)} rows for a training set of {rows}"
    except (OSError, ValueError, EOFError) as err:
        problem = f"does not load ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    if problem is None:
        return logits
    click.echo(f"note: the teacher-logit cache {path} {problem}; it is removed and computed again", err=True)
    path.unlink(missing_ok=True)
    return None


def cached_logits(path: Path, compute: Callable[[], np.ndarray], rows: int | None = None) -> tuple[np.ndarray, bool]:
    """The logits cached at ``path`` (see :func:`cache_file`; ``rows`` of them when given), or ``compute()``'s, then
    cached; and whether the cache had them. No collective calls, so one rank can use it while the others wait
    (augmentation's filter runs on rank 0)."""
    logits = read_cache(path, rows)
    if logits is not None:
        return logits, True
    logits = compute()
    save_array(path, logits)
    return logits, False


def with_teacher_logits(
    train_set: Dataset,
    teacher: PreTrainedModel,
    teacher_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    cache_dir: Path,
    batch_size: int = 128,
    known: np.ndarray | None = None,
    bf16: bool = False,
) -> tuple[Dataset, dict[str, Any]]:
    """``train_set`` with a ``teacher_logits`` column, read from the cache or computed and cached (under bf16
    autocast when ``bf16``).

    ``known``: the teacher's logits on ``train_set`` when the caller already has them (augmentation's filter
    computes them); on a cache miss they are stored instead of running the teacher again.
    Returns the dataset and a record (cache file, hit or miss) for ``distill.json``.
    """
    if known is not None and len(known) != len(train_set):
        raise ValueError(f"known teacher logits have {len(known)} rows for a training set of {len(train_set)}")
    path = cache_file(train_set, teacher_dir, cache_dir, bf16)
    # rank 0's disk decides, for every rank (a cache that does not load is removed there, and rebuilt below)
    hit = distributed.on_main(lambda: read_cache(path, len(train_set)) is not None)
    if hit:
        logits = np.load(path)
    else:  # every rank holds ``known``; otherwise in a data-parallel run each rank computes a contiguous share
        logits = (
            known.astype(np.float32, copy=False)
            if known is not None
            else distributed.sharded(
                len(train_set),
                lambda start, end, show: teacher_pass(
                    teacher, train_set.select(range(start, end)), tokenizer, batch_size, show, bf16
                ),
            )
        )
        distributed.on_main(lambda: save_array(path, logits))
    if TEACHER_LOGITS in train_set.column_names:
        train_set = train_set.remove_columns(TEACHER_LOGITS)
    return train_set.add_column(TEACHER_LOGITS, logits.tolist()), {
        "teacher_logits": "cached",
        "cache_file": str(path),
        "cache": "hit" if hit else "miss",
        "teacher_logits_precision": "bf16" if bf16 else "fp32",
        **({"computed_by": "augmentation filter"} if known is not None and not hit else {}),
    }
