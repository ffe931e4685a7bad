"""One tabular file read into a DataFrame (TSV, CSV, JSON lines, Parquet; with or without a header; quoting; BOM),
and the columns of a task found in it by name or position, with the header-less file read as if it had a header
caught and explained."""

from __future__ import annotations

import csv
from dataclasses import astuple, dataclass
from pathlib import Path

import pandas as pd

from distill.config import DataConfig
from distill.errors import DataError
from distill.tasks import GLUE_TASKS

SUFFIX_FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


@dataclass(frozen=True)
class Columns:
    """The configured columns, each a name or a 0-based position (an ``int``)."""

    text: str | int
    text_pair: str | int | None
    label: str | int

    def by_key(self) -> dict[str, str | int]:
        """The columns under their config keys, in file order of a GLUE file: text, pair (when set), label."""
        keys: dict[str, str | int] = {"data.text_column": self.text}
        if self.text_pair is not None:
            keys["data.text_pair_column"] = self.text_pair
        keys["data.label_column"] = self.label
        return keys


def file_format(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"cannot tell the format of {path} from its suffix; set data.format to one of tsv, csv, jsonl, parquet"
        )
    return fmt


def _quoting(fmt: str, quoting: str) -> int:
    """The ``csv`` module's quoting mode: ``auto`` disables quoting for TSV (as GLUE needs) and keeps it for CSV."""
    if quoting == "auto":
        quoting = "none" if fmt == "tsv" else "csv"
    return csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL


def read_table(path: Path, declared_format: str = "auto", header: bool = True, quoting: str = "auto") -> pd.DataFrame:
    """Read one local data file into a DataFrame (TSV/CSV cells as strings; text as UTF-8 with or without a BOM).

    Args:
        path: the file.
        declared_format: ``data.format`` (``auto``: from the suffix).
        header: whether the first line of a TSV/CSV file names the columns; without one, columns are ``0..n-1``.
        quoting: ``data.quoting``: ``auto`` (none for TSV, csv for CSV), ``none`` or ``csv``.
    """
    if not path.is_file():
        raise DataError(f"data file {path} does not exist; fix the path in the config or pass --set data.train=PATH")
    fmt = file_format(path, declared_format)
    if not header and fmt not in ("tsv", "csv"):
        raise DataError(
            f"data.header: false is for TSV and CSV files, but {path} is read as {fmt}, whose columns always have "
            "names; remove data.header (columns may still be given by position)"
        )
    try:
        if fmt in ("tsv", "csv"):
            frame = pd.read_csv(
                path,
                sep="\t" if fmt == "tsv" else ",",
                header=0 if header else None,
                quoting=_quoting(fmt, quoting),
                dtype=str,
                keep_default_na=False,
                na_filter=False,
                encoding="utf-8-sig",
            )
        elif fmt == "jsonl":
            frame = pd.read_json(path, lines=True, dtype=False, encoding="utf-8-sig")
        else:
            frame = pd.read_parquet(path)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"could not read {path} as {fmt} ({first_line}); check the file or set data.format") from err
    if frame.empty:
        raise DataError(f"data file {path} has no rows; point the config at a file with data")
    return frame


def resolve_columns(cfg: DataConfig, task: str | None) -> Columns:
    preset = GLUE_TASKS.get(task) if task else None
    text = cfg.text_column if cfg.text_column is not None else (preset.text_column if preset else None)
    label = cfg.label_column if cfg.label_column is not None else (preset.label_column if preset else None)
    if text is None or label is None:
        raise DataError("set data.text_column and data.label_column for a task without a preset")
    pair = cfg.text_pair_column if cfg.text_pair_column is not None else (preset.text_pair_column if preset else None)
    columns = Columns(text, pair, label)
    named = {key: ref for key, ref in columns.by_key().items() if isinstance(ref, str)}
    if not cfg.header and named:
        origin = {
            key: "the name" if getattr(cfg, key.removeprefix("data.")) is not None else f"the {task} preset's name"
            for key in named
        }
        given = " and ".join(f"{key} is {origin[key]} {ref!r}" for key, ref in named.items())
        raise DataError(
            f"data.header is false, so columns are 0-based positions, but {given}; give positions instead, e.g. "
            f"{_position_flags(columns.by_key())}"
        )
    return columns


def _position_flags(keys: dict[str, str | int], positions: dict[str, int] | None = None) -> str:
    """``--set`` flags giving every column key a position: from ``positions`` where known, else 0, 1, ... in order."""
    positions = positions or {}
    return " ".join(f"--set {key}={positions.get(key, index)}" for index, key in enumerate(keys))


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _values(frame: pd.DataFrame, column: object) -> set[str]:
    return set(frame[column].astype(str).str.strip())


def _cells(frame: pd.DataFrame) -> str:
    """The column names, each cut to 30 characters, for a message."""
    return ", ".join(str(name) if len(str(name)) <= 30 else f"{str(name)[:27]}..." for name in frame.columns)


def _header_as_data(frame: pd.DataFrame, known_labels: set[str], pair: bool) -> tuple[str, dict[str, int]] | None:
    """Why the header line of a TSV/CSV file looks like a data row, with guessed positions of the label (a cell that
    reads as a label, else the last) and the text (the longest other cell; with ``pair``, the two longest in file
    order); None when it looks like column names."""
    cells = [str(name).strip() for name in frame.columns]
    labels = [p for p, cell in enumerate(cells) if cell in known_labels or cell in _values(frame, frame.columns[p])]
    numbers = [p for p, cell in enumerate(cells) if _is_number(cell)]
    sentences = [p for p, cell in enumerate(cells) if len(cell.split()) >= 5]
    if labels:
        reason = f"{cells[labels[0]]!r} reads as a label"
    elif numbers:
        reason = f"{cells[numbers[0]]!r} is a number"
    elif sentences:
        reason = f"{cells[sentences[0]][:40]!r} reads as a sentence"
    else:
        return None
    label = labels[-1] if labels else len(cells) - 1
    longest = sorted((p for p in range(len(cells)) if p != label), key=lambda p: -len(cells[p]))[: 2 if pair else 1]
    guess = dict(zip(("data.text_column", "data.text_pair_column"), sorted(longest), strict=False))
    return reason, {**guess, "data.label_column": label}


def locate_columns(
    frame: pd.DataFrame, cfg: DataConfig, columns: Columns, has_header_line: bool, known_labels: set[str], where: str
) -> Columns:
    """The configured columns as the frame's own column keys (positions looked up).

    Args:
        has_header_line: the frame's column names were read from the first line of a TSV or CSV file.
        known_labels: label names known before reading (preset, ``data.label_names``), to recognise a data row.

    Raises:
        DataError: a position past the last column; a name the file lacks (saying so when the header line reads as
            data); with ``data.header`` left unset, a label column given by position whose header cell reads as a
            label.
    """
    wanted = columns.by_key()
    count = len(frame.columns)
    past = {key: ref for key, ref in wanted.items() if isinstance(ref, int) and ref >= count}
    if past:
        given = " and ".join(f"{key} is {ref}" for key, ref in past.items())
        raise DataError(
            f"{where} has {count} column(s), at positions 0 to {count - 1}, but {given}; set the 0-based position of "
            "the right column"
        )
    missing = {key: ref for key, ref in wanted.items() if isinstance(ref, str) and ref not in frame.columns}
    if missing:
        found = ", ".join(map(str, frame.columns))
        problems = ", ".join(f"{key} {name!r}" for key, name in missing.items())
        looks = _header_as_data(frame, known_labels, columns.text_pair is not None) if has_header_line else None
        if looks is None:
            raise DataError(
                f"{where} has no column for {problems} (its columns are: {found}); set the right column name in the "
                "config"
            )
        reason, guess = looks
        raise DataError(
            f"{where} has no column for {problems}, and its first line, read as the header ({_cells(frame)}), looks "
            f"like data ({reason}); "
            "if the file has no header line, set data.header: false and give the columns by 0-based position, e.g. "
            f"--set data.header=false {_position_flags(wanted, guess)}"
        )
    located = Columns(*(frame.columns[ref] if isinstance(ref, int) else ref for ref in astuple(columns)))
    if has_header_line and "header" not in cfg.model_fields_set and isinstance(columns.label, int):
        cell = str(located.label).strip()
        values = _values(frame, located.label)
        if cell in known_labels or cell in values or (_is_number(cell) and all(map(_is_number, values))):
            raise DataError(
                f"{where}: the first line, read as the header, has {cell!r} in label column {columns.label}, which "
                "reads as a label; set data.header: false if the file has no header line, or data.header: true to "
                "keep that line as the header"
            )
    return located
