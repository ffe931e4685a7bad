"""Atomic file and directory writes, so that a crash never leaves a half-written artifact behind; and the short
stable hashes that key run stages and on-disk caches."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it over ``path``.

    The file gets the permissions a plain ``open(path, "w")`` would give it (``mkstemp`` makes it owner-only).
    On an exception the temporary file is removed and any previous ``path`` is left untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file written by :func:`write_json`."""
    return json.loads(path.read_text(encoding="utf-8"))


def save_array(path: Path, array: Any) -> None:
    """Save a numpy array as ``.npy`` atomically."""
    import numpy as np

    atomic_write(path, lambda handle: np.save(handle, np.asarray(array)))


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``path`` only when the block succeeds.

    On an exception the temporary directory is removed and any previous ``path`` is left untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o777 & ~_umask())
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def copy_file(source: Path, target: Path) -> None:
    """Copy ``source`` over ``target`` atomically."""
    atomic_write(target, lambda handle: handle.write(source.read_bytes()))


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts."""
    payload = json.dumps(parts, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()[:16]


def file_digest(*paths: Path) -> str:
    """SHA-256 (16 hex digits) over the bytes of ``paths``, in order."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def weights_digest(model_dir: Path) -> str:
    """:func:`file_digest` of a saved model's ``*.safetensors`` files: changes whenever its weights do."""
    return file_digest(*sorted(model_dir.glob("*.safetensors")))
