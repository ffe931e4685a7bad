"""The run: its directory, its manifest and its data; skip, resume and move aside.

A stage is skipped when ``manifest.json`` holds a complete entry for it with the same fingerprint
(:mod:`distill.fingerprints`) and its outputs exist. A manifest written under an earlier fingerprint rule is
migrated when it is opened, never recomputed. When a stage's inputs really changed, its previous outputs are moved
to ``RUN/previous/``, not deleted.

A completed entry also records the size and a digest of every file of the stage's outputs (:func:`output_files`),
so that a file cut short or changed after the stage finished (a truncated ``model.onnx``) is noticed by content on
the next run: that stage is recomputed, saying which file changed. Entries written before digests were recorded
are trusted as before, so an upgrade recomputes nothing.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import click

from distill import distributed, previous
from distill.config import Config, dump_config
from distill.data import TaskData, load_task_data
from distill.env import environment
from distill.errors import DistillError, StageError
from distill.files import file_digest, read_json, write_json, write_text
from distill.fingerprints import RULE, migrate, stage_fingerprints
from distill.layout import CHECKPOINTS_DIR, TRAIN_LOG, RunLayout

FULL_DIGEST_BYTES = 64 << 20
"""Files up to this size are hashed whole; larger ones (a teacher's weights) by their size and
:data:`SAMPLED_BLOCKS` blocks spread over them, first and last included, so that checking a finished run reads
little more than its small files: truncation always changes the size, and a file rewritten changes its samples."""
SAMPLED_BLOCKS, SAMPLED_BLOCK_BYTES = 16, 1 << 16
UNRECORDED = {TRAIN_LOG.parts[0], CHECKPOINTS_DIR}
"""Folders whose files :func:`output_files` leaves out."""


def content_digest(path: Path, size: int | None = None) -> str:
    """SHA-256 (16 hex digits) of ``path``'s bytes, or, above :data:`FULL_DIGEST_BYTES`, of sampled blocks."""
    size = path.stat().st_size if size is None else size
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        if size <= FULL_DIGEST_BYTES:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        else:
            step = (size - SAMPLED_BLOCK_BYTES) / (SAMPLED_BLOCKS - 1)
            for index in range(SAMPLED_BLOCKS):
                handle.seek(int(index * step))
                digest.update(handle.read(SAMPLED_BLOCK_BYTES))
    return digest.hexdigest()[:16]


def output_files(root: Path, paths: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """``{path relative to root: {"bytes", "digest"}}`` for every file in ``paths`` (files, or folders walked
    whole), leaving out hidden names (staging files, the lock) and training logs and checkpoints: records of how a
    model was trained, which no later stage reads."""
    files: dict[str, dict[str, Any]] = {}
    for path in paths:
        found = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
        for file in found:
            try:
                relative = file.relative_to(root)
            except ValueError:
                continue  # (outside the run directory: not the run's to vouch for)
            if any(part.startswith(".") for part in relative.parts) or UNRECORDED & set(relative.parts[:-1]):
                continue
            size = file.stat().st_size
            files[relative.as_posix()] = {"bytes": size, "digest": content_digest(file, size)}
    return files


def changed_output(root: Path, entry: dict[str, Any] | None) -> tuple[str, str] | None:
    """The first file recorded in ``entry`` (:func:`output_files`) that is no longer as the stage left it, and how
    ("is missing" or "changed"); None when every one is intact or nothing was recorded (an older manifest)."""
    for relative, recorded in ((entry or {}).get("output_files") or {}).items():
        path = root / relative
        if not path.is_file():
            return relative, "is missing"
        size = path.stat().st_size
        if size != recorded.get("bytes") or content_digest(path, size) != recorded.get("digest"):
            return relative, "changed"
    return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class StageResult:
    """What a stage returns: a summary for the manifest and one readable line for the terminal."""

    summary: dict[str, Any]
    line: str


@dataclass
class Run:
    """One run directory and the config it runs; holds the manifest and the lazily loaded data."""

    config: Config
    run_dir: Path
    manifest: dict[str, Any] = field(default_factory=dict)
    checked: dict[str, tuple[str, str] | None] = field(default_factory=dict, repr=False)
    """Rank 0's :func:`changed_output` verdict per stage, once per command (several stages read one upstream)."""

    @cached_property
    def data(self) -> TaskData:
        return load_task_data(self.config.data, self.config.task, self.config.seed)

    @cached_property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_dir)

    @cached_property
    def fingerprints(self) -> dict[str, str]:
        return stage_fingerprints(self.config)

    @cached_property
    def data_digest(self) -> str | None:
        """A hash of the local data files' bytes (None for a hub dataset): kept beside each stage's fingerprint,
        so that a data file edited under a finished run makes its stages recompute rather than be reused."""
        files = [path for path in (self.config.data.train, self.config.data.validation) if path is not None]
        return file_digest(*files) if files and all(Path(path).is_file() for path in files) else None

    def record_budget(self, notes: list[str]) -> None:
        """Keep the budget lines the report states: ``notes``, the budgets distill chose for this config, or, on a
        rerun from the run's own ``config.yaml`` (which writes out every chosen value, so nothing is chosen again),
        the lines recorded when distill chose them."""
        recorded = list(self.manifest.get("budget", []))
        config_file = self.layout.config
        same = config_file.is_file() and config_file.read_text(encoding="utf-8") == dump_config(self.config)
        self.manifest["budget"] = recorded if not notes and recorded and same else notes

    def save_manifest(self) -> None:
        write_json(self.layout.manifest, self.manifest)

    def changed_output(self, key: str) -> tuple[str, str] | None:
        """:func:`changed_output` for stage ``key``'s entry, checked once per command (call it on rank 0)."""
        if key not in self.checked:
            self.checked[key] = changed_output(self.layout.root, self.manifest["stages"].get(key))
        return self.checked[key]

    def teacher_fingerprint(self) -> str:
        return self.fingerprints["teacher"]

    def student_fingerprint(self, name: str, seed: int | None = None) -> str:
        """Student ``name`` trained with ``seed``, or, with ``seed`` None, the finished student."""
        return self.fingerprints[f"student:{name}" if seed is None else f"student:{name}@{seed}"]

    def export_fingerprint(self) -> str:
        return self.fingerprints["export"]

    def bench_fingerprint(self) -> str:
        return self.fingerprints["bench"]

    def report_fingerprint(self) -> str:
        return self.fingerprints["report"]


def open_run(config: Config, run_dir: Path, data: TaskData | None = None) -> Run:
    """Open (or prepare) ``run_dir`` for ``config`` without writing anything; an older manifest is migrated in
    memory (:func:`migrate`) and saved by the first stage that runs. ``data``: the task's data, when already loaded."""
    run = Run(config=config, run_dir=Path(run_dir))
    if data is not None:
        run.__dict__["data"] = data  # the cached property, filled
    if run.layout.manifest.is_file():
        run.manifest = read_json(run.layout.manifest)
        carried = migrate(run.manifest, run.layout)
        if carried and data is None:  # said once per command: when the data is first loaded
            click.echo(f"manifest: fingerprints of {len(carried)} finished stage(s) carried over to rule {RULE}")
    else:
        run.manifest = {"created": _now(), "fingerprint_rule": RULE, "stages": {}}
    return run


def run_stage(
    run: Run,
    key: str,
    outputs: Sequence[Path],
    work: Callable[[], StageResult],
    start: str,
    aside: Sequence[Path] = (),
    collective: bool = True,
) -> bool:
    """Run ``work`` unless stage ``key`` is complete with the same fingerprint and its outputs exist as it left them.

    ``start`` is printed when the stage starts. ``aside`` are the stage's previous outputs: moved to
    ``RUN/previous/`` when the inputs changed, kept (for resumption) when an interrupted stage is rerun with the
    same inputs. The files of ``outputs`` and ``aside`` (folders walked whole) are recorded with their sizes and
    digests when the stage completes; when one of them is later missing or changed (cut short by a full disk, say),
    the stage is recomputed, saying which file, and what it left is moved aside (never brought back as finished).
    In a data-parallel run, every rank runs ``work`` when ``collective`` (training), otherwise rank 0 alone; rank 0
    alone writes the manifest and checks the files. Returns whether the stage ran.
    """
    digest, data = run.fingerprints[key], run.data_digest
    entry = run.manifest["stages"].get(key)
    data_changed = bool(entry and data and entry.get("data") not in (None, data))  # None: recorded before it was
    changed = bool(entry and (entry.get("fingerprint") != digest or data_changed))
    complete = not changed and entry and entry.get("status") == "complete" and all(path.exists() for path in outputs)
    # every rank takes rank 0's decision, which reads the recorded outputs' contents
    complete, damage = distributed.on_main(lambda: (bool(complete), run.changed_output(key) if complete else None))
    if complete and damage is None:
        click.echo(f"[{key}] complete, inputs unchanged: skipped")
        return False
    main, moved = distributed.is_main(), None
    if changed:  # outputs finished earlier with these very inputs may wait in previous/
        restored = distributed.on_main(lambda: previous.bring_back(run.layout, key, digest, data, aside, entry))
        if restored is not None:
            folder, entry = restored
            run.manifest["stages"][key] = entry
            run.checked.pop(key, None)
            if main:
                run.save_manifest()
            click.echo(f"[{key}] inputs as in an earlier run: its outputs are back in place (from {folder})")
            exist = all(path.exists() for path in outputs)
            exist, damage = distributed.on_main(lambda: (exist, run.changed_output(key) if exist else None))
            if exist and damage is None:
                return False
            changed = False
    if changed:
        moved = distributed.on_main(
            lambda: previous.move_aside(run.layout, key, aside, run.manifest["stages"].get(key))
        )
        where = f"; the previous outputs are kept in {moved}" if moved else ""
        what = "the data files changed" if data_changed else "inputs changed"
        click.echo(f"[{key}] {what} since the last run: recomputing{where}")
    elif damage is not None:  # what is left is no finished output: kept, under an entry that is never brought back
        path, how = damage
        left = distributed.on_main(
            lambda: previous.move_aside(run.layout, key, aside, {**entry, "status": "damaged", "damaged": path})
        )
        where = f"; what it left is kept in {left}" if left else ""
        click.echo(f"[{key}] {path} {how} since {key} finished: recomputing {key}{where}")
    elif entry and entry.get("status") != "complete":
        click.echo(f"[{key}] resuming an interrupted run")
    elif entry:
        click.echo(f"[{key}] outputs missing from the run directory: recomputing")
    click.echo(f"[{key}] {start}")
    started = time.time()
    run.manifest["stages"][key] = {"status": "running", "fingerprint": digest, "data": data, "started": _now()}
    if main:
        run.save_manifest()
    distributed.barrier()
    if not main:
        if collective:
            work()
        distributed.barrier()  # rank 0 finishes the stage: evaluation, outputs, manifest
        run.manifest = read_json(run.layout.manifest)
        return True
    try:
        result = work()
    except DistillError:
        if moved is None or entry is None:
            run.manifest["stages"][key].update(status="failed", error=_first_line(sys.exc_info()[1]))
        else:  # a refusal of new inputs: the finished outputs go back in place, as if it had not been tried
            attempt = previous.restore(run.layout, key, moved, aside)
            run.manifest["stages"][key] = entry
            left = f" (what this attempt wrote is in {attempt})" if attempt else ""
            click.echo(f"[{key}] refused; the earlier outputs are back in place{left}")
        run.save_manifest()
        raise
    except BaseException as err:
        run.manifest["stages"][key].update(status="failed", error=_first_line(err))
        run.save_manifest()
        raise
    seconds = round(time.time() - started, 1)
    run.manifest["stages"][key] = {
        "status": "complete",
        "fingerprint": digest,
        "data": data,
        "started": run.manifest["stages"][key]["started"],
        "finished": _now(),
        "seconds": seconds,
        "environment": environment(distributed.world_size()),
        "summary": result.summary,
        "output_files": output_files(run.layout.root, [*outputs, *aside]),
    }
    run.checked[key] = None
    run.save_manifest()
    write_text(run.layout.config, dump_config(run.config))  # the config the finished stages ran with
    click.echo(f"[{key}] {result.line} ({_duration(seconds)})")
    distributed.barrier()
    return True


def _first_line(error: BaseException | None) -> str:
    return (str(error).splitlines()[0] if str(error) else type(error).__name__) if error else "unknown"


def _duration(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest} s" if minutes else f"{seconds:.1f} s"


def require(run: Run, key: str, command: str) -> None:
    """Refuse to run a stage whose upstream stage ``key`` is missing or was completed with other inputs."""
    entry = run.manifest["stages"].get(key)
    if not entry or entry.get("status") != "complete":
        raise StageError(
            f"stage {key} has not completed in {run.run_dir}; run `distill {command}` (or `distill run`) first"
        )
    if entry.get("fingerprint") != run.fingerprints[key]:
        raise StageError(
            f"stage {key} in {run.run_dir} was completed with a different config; rerun `distill {command}` "
            "(or `distill run`) with this config first"
        )
    damage = distributed.on_main(lambda: run.changed_output(key))
    if damage is not None:
        path, how = damage
        raise StageError(
            f"{run.run_dir / path} {how} since stage {key} finished; rerun `distill {command}` (or `distill run`) "
            "to compute it again"
        )


def any_complete(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a manifest with at least one completed stage."""
    path = RunLayout(run_dir).manifest
    if not path.is_file():
        return False
    return any(entry.get("status") == "complete" for entry in read_json(path).get("stages", {}).values())
