"""One distill process per run directory at a time, and only in directories that are distill's.

The lock is an advisory ``flock`` on ``RUN/.lock``, held for the whole command: the kernel releases it when the
holder exits, however it exits (SIGKILL included), so a lock left by a killed run is simply taken over. A data-parallel
launcher takes the lock for its ranks and tells them so through the environment.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from distill.errors import DistillError, StageError
from distill.layout import LOCK_FILE, RunLayout
from distill.manifest import any_complete

HELD_BY_LAUNCHER = "DISTILL_RUN_LOCK"
"""Set by a launcher that holds the lock to the run directory it holds it for; its ranks then take none."""


@contextlib.contextmanager
def claim(run_dir: Path, for_ranks: bool = False) -> Iterator[None]:
    """Make ``run_dir`` this command's for the block: refuse a directory of the user's own files
    (:func:`refuse_foreign`), hold the lock (:func:`run_lock`; with ``for_ranks``, on behalf of the data-parallel
    ranks this process launches), and when the block fails before any stage completed in a directory this call
    created, remove it again, so that bad input leaves nothing behind."""
    refuse_foreign(run_dir)
    created = not run_dir.exists()
    try:
        with run_lock(run_dir):
            if not for_ranks:
                yield
                return
            os.environ[HELD_BY_LAUNCHER] = str(run_dir.resolve())
            try:
                yield
            finally:
                del os.environ[HELD_BY_LAUNCHER]
    except DistillError:
        if created and run_dir.exists() and not any_complete(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def refuse_foreign(run_dir: Path) -> None:
    """Refuse a non-empty directory that is not a distill run directory (no manifest): its files are the user's."""
    layout = RunLayout(run_dir)
    if run_dir.is_dir() and not layout.manifest.is_file() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        raise StageError(
            f"{run_dir} already holds files and is not a distill run directory (it has no manifest.json); "
            "pass an empty or new --run-dir"
        )


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block (creating the directory), or raise :class:`StageError` naming the
    process that holds it."""
    resolved = str(Path(run_dir).resolve())
    if os.environ.get(HELD_BY_LAUNCHER) == resolved:
        yield
        return
    path = RunLayout(run_dir).root / LOCK_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a+", encoding="utf-8")
    except OSError as err:
        raise StageError(
            f"cannot write to the run directory {run_dir} ({err.strerror}); pass a --run-dir on a writable disk"
        ) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise StageError(
                f"{run_dir} is in use by another distill process (pid {holder}); wait for it to finish or stop it, "
                "then rerun"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
