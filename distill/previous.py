"""``RUN/previous/``: outputs of a stage whose inputs changed are moved here, never deleted, each folder with the
manifest entry they were finished under; they come back when their inputs do (the user reruns the earlier config)
or when the new inputs are refused."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from distill.files import read_json, write_json
from distill.layout import RunLayout

ENTRY_FILE = "entry.json"
"""The manifest entry the moved outputs were finished under, inside their folder."""


def _prefix(key: str) -> str:
    return key.replace(":", "-").replace("@", "-seed-")


def move_aside(layout: RunLayout, key: str, paths: Sequence[Path], entry: dict[str, Any] | None = None) -> Path | None:
    """Move the existing ``paths`` (inside the run directory) to ``RUN/previous/KEY-TIME/``, keeping their relative
    layout, with ``entry`` (their manifest entry) beside them; returns that folder, or None when nothing existed."""
    existing = [path for path in paths if path.exists()]
    if not existing:
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = layout.previous / f"{_prefix(key)}-{stamp}"
    target, counter = base, 1
    while target.exists():
        target, counter = base.with_name(f"{base.name}-{counter}"), counter + 1
    for path in existing:
        destination = target / path.relative_to(layout.root)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, destination)
    if entry is not None:
        write_json(target / ENTRY_FILE, entry)
    return target


def _put_back(layout: RunLayout, kept: Path, paths: Sequence[Path]) -> None:
    for path in paths:
        source = kept / path.relative_to(layout.root)
        if source.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, path)
    shutil.rmtree(kept, ignore_errors=True)


def restore(layout: RunLayout, key: str, moved: Path, paths: Sequence[Path]) -> Path | None:
    """Put the outputs :func:`move_aside` moved to ``moved`` back in place, first moving aside what a refused attempt
    left there; returns where that went."""
    attempt = move_aside(layout, f"{key}-refused", paths)
    _put_back(layout, moved, paths)
    return attempt


def find(layout: RunLayout, key: str, fingerprint: str, data: str | None) -> Path | None:
    """The newest folder of stage ``key`` whose outputs were finished with ``fingerprint`` (and the same data)."""
    for folder in sorted(layout.previous.glob(f"{_prefix(key)}-*"), reverse=True):
        entry = read_json(folder / ENTRY_FILE) if (folder / ENTRY_FILE).is_file() else {}
        finished = entry.get("status") == "complete" and entry.get("fingerprint") == fingerprint
        if finished and entry.get("data") in (None, data):
            return folder
    return None


def bring_back(
    layout: RunLayout,
    key: str,
    fingerprint: str,
    data: str | None,
    paths: Sequence[Path],
    current: dict[str, Any] | None,
) -> tuple[Path, dict[str, Any]] | None:
    """When :func:`find` finds outputs of stage ``key`` finished with these inputs, put them back in place (today's
    move aside, with their ``current`` entry) and return where they were and their entry; else None."""
    folder = find(layout, key, fingerprint, data)
    if folder is None:
        return None
    earlier = read_json(folder / ENTRY_FILE)
    move_aside(layout, key, paths, current)
    _put_back(layout, folder, paths)
    return folder, earlier
