"""Train/validation splits from local files or the hub, with canonical columns, and their tokenisation."""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np
import pandas as pd

from distill.config import DataConfig
from distill.errors import DataError
from distill.tables import SUFFIX_FORMATS, Columns, file_format, locate_columns, read_table, resolve_columns
from distill.tasks import GLUE_TASKS

__all__ = ["SUFFIX_FORMATS", "TaskData", "load_task_data", "read_table", "tokenize"]


@dataclass
class TaskData:
    """The two splits with canonical columns ``text``, optional ``text_pair`` and ``label``.

    ``label`` holds class ids (``int``) for classification and floats for regression.
    """

    train: datasets.Dataset
    validation: datasets.Dataset
    label_names: list[str] | None
    metrics: list[str]

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def has_pair(self) -> bool:
        return "text_pair" in self.train.column_names

    @property
    def main_metric(self) -> str:
        return self.metrics[0]


def _label_names(cfg: DataConfig, task: str | None, train_labels: pd.Series) -> list[str] | None:
    """Decide the label vocabulary: ``None`` means regression."""
    preset = GLUE_TASKS.get(task) if task else None
    if cfg.problem_type == "regression" or (
        cfg.problem_type == "auto" and preset and preset.label_names is None and cfg.label_names is None
    ):
        return None
    if cfg.label_names is not None:
        return list(cfg.label_names)
    if preset is not None and preset.label_names is not None:
        return list(preset.label_names)
    values = train_labels.astype(str).str.strip()
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        if cfg.problem_type == "auto" and not (numeric == numeric.round()).all():
            return None
        ids = sorted(int(v) for v in numeric.unique())
        if ids != list(range(len(ids))):
            raise DataError(f"integer labels must be 0..K-1 but the train split has {ids[:10]}; set data.label_names")
        return [str(i) for i in ids]
    return sorted(values.unique())


def _class_id(value: str, num_classes: int) -> int | None:
    """``value`` as a class index when it is a whole number in range (``"1"`` and ``"1.0"`` both give 1)."""
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number.is_integer() and 0 <= number < num_classes else None


def _encode_labels(labels: pd.Series, label_names: list[str] | None, where: str) -> list[int] | list[float]:
    values = labels.astype(str).str.strip()
    if label_names is None:
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.isna().any():
            bad = values[numeric.isna()].iloc[0]
            raise DataError(
                f"{where} has a non-numeric label {bad!r} in a regression task; fix the file or set data.problem_type"
            )
        return numeric.astype(float).tolist()
    index = {name: i for i, name in enumerate(label_names)}
    encoded: list[int] = []
    for row, value in enumerate(values):
        if value in index:
            encoded.append(index[value])
        elif (class_id := _class_id(value, len(label_names))) is not None:
            encoded.append(class_id)
        else:
            raise DataError(
                f"{where} row {row + 1} has label {value!r}, which is not one of {label_names} nor an index into them; "
                "set data.label_names to the labels the file uses"
            )
    return encoded


def _texts(series: pd.Series, key: str, where: str) -> list[str]:
    """A text column as strings; a column of objects, lists or arrays (JSONL, Parquet) is refused, not stringified."""
    odd = next((value for value in series if isinstance(value, (dict, list, tuple, np.ndarray))), None)
    if odd is not None:
        raise DataError(
            f"{where}: {key} {series.name!r} holds {type(odd).__name__} values such as {str(odd)[:60]!r}, not text; "
            f"point {key} at a column of strings"
        )
    return series.astype(str).tolist()


def _canonical(frame: pd.DataFrame, columns: Columns, label_names: list[str] | None, where: str) -> datasets.Dataset:
    out = {"text": _texts(frame[columns.text], "data.text_column", where)}
    if columns.text_pair is not None:
        out["text_pair"] = _texts(frame[columns.text_pair], "data.text_pair_column", where)
    out["label"] = _encode_labels(frame[columns.label], label_names, where)
    return datasets.Dataset.from_dict(out)


def _hub_frames(cfg: DataConfig, label: str | int) -> tuple[pd.DataFrame, pd.DataFrame, list[str] | None]:
    """Load both splits of a hub dataset (needs network access at run time); ``label`` is the label column's name or
    position, whose class names the dataset may carry."""
    try:
        dataset = datasets.load_dataset(cfg.hub_dataset, cfg.hub_subset)
    except Exception as err:  # the hub raises many unrelated types; all mean "cannot get it"
        raise DataError(
            f"could not load hub dataset {cfg.hub_dataset!r} ({type(err).__name__}); check the name and network, "
            "or point data.train and data.validation at local files"
        ) from err
    for split in (cfg.train_split, cfg.validation_split):
        if split not in dataset:
            raise DataError(
                f"hub dataset {cfg.hub_dataset!r} has no split {split!r} (it has {list(dataset)}); "
                "set data.train_split/validation_split"
            )
    names = None
    features = dataset[cfg.train_split].features
    names_in_order = list(features)
    if isinstance(label, int):
        label = names_in_order[label] if label < len(names_in_order) else ""
    label_feature = features.get(label)
    if isinstance(label_feature, datasets.ClassLabel):
        names = list(label_feature.names)
    return dataset[cfg.train_split].to_pandas(), dataset[cfg.validation_split].to_pandas(), names


def load_task_data(cfg: DataConfig, task: str | None, seed: int = 0) -> TaskData:
    """Load, check and normalise both splits.

    Args:
        cfg: the ``data:`` section of the config (paths already absolute).
        task: a GLUE preset name, or ``None`` for a custom dataset described entirely by ``cfg``.
        seed: seeds the ``train_limit`` / ``validation_limit`` subsampling.
    """
    columns = resolve_columns(cfg, task)
    preset = GLUE_TASKS.get(task) if task else None
    known_labels = {*(preset.label_names or () if preset else ()), *(cfg.label_names or ())}
    if cfg.hub_dataset is not None:
        train_frame, validation_frame, hub_names = _hub_frames(cfg, columns.label)
        train_where, validation_where = (
            f"{cfg.hub_dataset}:{cfg.train_split}",
            f"{cfg.hub_dataset}:{cfg.validation_split}",
        )
        if hub_names and cfg.label_names is None:
            cfg = cfg.model_copy(update={"label_names": hub_names})
        train_header = validation_header = False
    else:
        assert cfg.train is not None and cfg.validation is not None, "DataConfig validator guarantees both paths"
        train_frame = read_table(cfg.train, cfg.format, cfg.header, cfg.quoting)
        validation_frame = read_table(cfg.validation, cfg.format, cfg.header, cfg.quoting)
        train_where, validation_where = str(cfg.train), str(cfg.validation)
        train_header, validation_header = (
            cfg.header and file_format(path, cfg.format) in ("tsv", "csv") for path in (cfg.train, cfg.validation)
        )
    train_columns = locate_columns(train_frame, cfg, columns, train_header, known_labels, train_where)
    validation_columns = locate_columns(
        validation_frame, cfg, columns, validation_header, known_labels, validation_where
    )
    label_names = _label_names(cfg, task, train_frame[train_columns.label])
    train = _canonical(train_frame, train_columns, label_names, train_where)
    validation = _canonical(validation_frame, validation_columns, label_names, validation_where)
    if cfg.train_limit is not None and cfg.train_limit < len(train):
        train = train.shuffle(seed=seed).select(range(cfg.train_limit))
    if cfg.validation_limit is not None and cfg.validation_limit < len(validation):
        validation = validation.shuffle(seed=seed).select(range(cfg.validation_limit))
    if cfg.metrics:
        metrics = list(cfg.metrics)
    elif preset is not None and (preset.label_names is None) == (label_names is None):
        metrics = list(preset.metrics)
    else:
        metrics = ["pearson", "spearman"] if label_names is None else ["accuracy"]
    return TaskData(train=train, validation=validation, label_names=label_names, metrics=metrics)


def tokenize(dataset: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
    """Tokenise ``text`` (and ``text_pair``) without padding; padding happens per batch in the collator.

    Returns a dataset with ``input_ids``, ``attention_mask``, ``token_type_ids`` (if the tokenizer makes
    them) and ``labels``.
    """
    has_pair = "text_pair" in dataset.column_names

    def encode(batch: dict[str, list]) -> dict[str, list]:
        encoded = tokenizer(
            batch["text"], batch["text_pair"] if has_pair else None, truncation=True, max_length=max_length
        )
        encoded["labels"] = batch["label"]
        return encoded

    return dataset.map(
        encode, batched=True, remove_columns=dataset.column_names, desc="tokenising", load_from_cache_file=False
    )
