"""The run: its directory, its manifest and its data; the fingerprint rule; skip, resume and move aside.

A stage is skipped when ``manifest.json`` holds a complete entry for it with the same fingerprint and its outputs
exist. The fingerprint rule (:data:`RULE`) hashes only the config values that differ from the schema's defaults,
plus the rule's version, so a release that adds a config field with a default changes no fingerprint and recomputes
nothing. A manifest written under an earlier rule is migrated when it is opened (:func:`migrate`), never recomputed.
When a stage's inputs really changed, its previous outputs are moved to ``RUN/previous/``, not deleted.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import click
import yaml
from pydantic import BaseModel

from distill import distributed, previous
from distill.config import Config, config_from_dict, dump_config
from distill.data import TaskData, load_task_data
from distill.env import environment
from distill.errors import ConfigError, DistillError, StageError
from distill.files import file_digest, fingerprint, read_json, write_json, write_text
from distill.layout import TWIN_SUFFIX, RunLayout

RULE = 2
"""The fingerprint rule's version. Rule 1 (distill up to c139548) hashed whole config sections, defaults included;
rule 2 hashes the values that differ from the defaults, with this version."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def settings(section: BaseModel, exclude: set[str] | None = None) -> Any:
    """The values of a config section that differ from the schema's defaults: what a fingerprint hashes. Values
    that judge a stage's result rather than shape it (``teacher.min_margin``, ``bench.gates``) are excluded."""
    return section.model_dump(mode="json", exclude_defaults=True, exclude=exclude)


def _stage_fingerprints(
    version: int | None,
    head: tuple[Any, ...],
    seeds: list[int] | None,
    default_seed: int,
    students: Sequence[tuple[str, Any]],
    export: Any,
    bench: Any,
) -> dict[str, str]:
    """Every stage's fingerprint by manifest key, from one rule's view of the config sections.

    ``head`` is what the teacher depends on (task, seed, data, teacher); ``students`` is ``(name, section)`` for
    every trained student and twin. A student trained with several ``seeds`` has one entry per seed
    (``student:NAME@SEED``) and one for the selection over them (``student:NAME``).
    """

    def digest(*parts: Any) -> str:
        return fingerprint(*parts) if version is None else fingerprint(f"rule-{version}", *parts)

    teacher = digest("teacher", *head)
    keys = {"teacher": teacher}
    each_seed = seeds if seeds else [default_seed]
    finished = []
    for name, spec in students:
        if seeds is None:
            keys[f"student:{name}"] = digest("student", teacher, spec)
        else:
            per_seed = [digest("student", teacher, spec, seed) for seed in each_seed]
            if len(each_seed) > 1:
                keys.update({f"student:{name}@{seed}": value for seed, value in zip(each_seed, per_seed, strict=True)})
            keys[f"student:{name}"] = digest("seeds", per_seed)
        finished.append(keys[f"student:{name}"])
    keys["export"] = digest("export", teacher, finished, export)
    keys["bench"] = digest("bench", keys["export"], bench)
    keys["report"] = digest("report", keys["bench"])
    return keys


def stage_fingerprints(config: Config) -> dict[str, str]:
    """Every stage's fingerprint under the current rule."""
    return _stage_fingerprints(
        RULE,
        (config.task, config.seed, settings(config.data), settings(config.teacher, exclude={"min_margin"})),
        config.seeds,
        config.seed,
        [(student.name, settings(student)) for student in config.trained_students()],
        settings(config.export),
        settings(config.bench, exclude={"gates"}),
    )


def legacy_fingerprints(raw: dict[str, Any]) -> dict[str, str]:
    """Every stage's fingerprint under rule 1, from the ``config.yaml`` such a run wrote (its full dump)."""
    teacher = {k: v for k, v in raw["teacher"].items() if not (k == "seeds" and v is None)}
    students = []
    for spec in raw["students"]:
        students.append((spec["name"], spec))
        if spec.get("baseline"):
            twin = {**spec, "name": spec["name"] + TWIN_SUFFIX, "objective": "labels", "baseline": False}
            students.append((twin["name"], twin))
    return _stage_fingerprints(
        None,
        (raw["task"], raw["seed"], raw["data"], teacher),
        raw.get("seeds"),
        raw["seed"],
        students,
        raw["export"],
        {k: v for k, v in raw["bench"].items() if k != "gates"},
    )


def migrate(manifest: dict[str, Any], layout: RunLayout) -> list[str]:
    """Bring a manifest written under an earlier fingerprint rule to :data:`RULE`, in place; returns the stages
    whose fingerprints were carried over.

    An entry is carried over when its fingerprint is what rule 1 gives for the run's own ``config.yaml``: it was
    computed from that config, so it gets that config's fingerprint under the current rule. Any other entry keeps
    its old fingerprint, which matches nothing now, so that stage is recomputed (its outputs moved aside).
    """
    if manifest.get("fingerprint_rule") == RULE:
        return []
    manifest["fingerprint_rule"] = RULE
    if not layout.config.is_file() or not manifest.get("stages"):
        return []
    try:
        raw = yaml.safe_load(layout.config.read_text(encoding="utf-8"))
        legacy = legacy_fingerprints(raw)
        current = stage_fingerprints(config_from_dict(raw, str(layout.config)))
    except (yaml.YAMLError, KeyError, TypeError, AttributeError, ConfigError):
        return []  # not a config distill wrote: nothing can be vouched for
    carried = []
    for key, entry in manifest["stages"].items():
        if key in legacy and key in current and entry.get("fingerprint") == legacy[key]:
            entry.update(fingerprint=current[key], migrated_from_rule=1)
            carried.append(key)
    return carried


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

    def save_manifest(self) -> None:
        write_json(self.layout.manifest, self.manifest)

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
    """Run ``work`` unless stage ``key`` is complete with the same fingerprint and its outputs exist.

    ``start`` is printed when the stage starts. ``aside`` are the stage's previous outputs: moved to
    ``RUN/previous/`` when the inputs changed, kept (for resumption) when an interrupted stage is rerun with the
    same inputs. In a data-parallel run, every rank runs ``work`` when ``collective`` (training), otherwise rank 0
    alone; rank 0 alone writes the manifest. Returns whether the stage ran.
    """
    digest, data = run.fingerprints[key], run.data_digest
    entry = run.manifest["stages"].get(key)
    data_changed = bool(entry and data and entry.get("data") not in (None, data))  # None: recorded before it was
    changed = bool(entry and (entry.get("fingerprint") != digest or data_changed))
    complete = not changed and entry and entry.get("status") == "complete" and all(path.exists() for path in outputs)
    if distributed.broadcast(bool(complete)):  # every rank takes rank 0's decision
        click.echo(f"[{key}] complete, inputs unchanged: skipped")
        return False
    main, moved = distributed.is_main(), None
    if changed:  # outputs finished earlier with these very inputs may wait in previous/
        restored = distributed.on_main(lambda: previous.bring_back(run.layout, key, digest, data, aside, entry))
        if restored is not None:
            folder, entry = restored
            run.manifest["stages"][key] = entry
            if main:
                run.save_manifest()
            click.echo(f"[{key}] inputs as in an earlier run: its outputs are back in place (from {folder})")
            if distributed.broadcast(all(path.exists() for path in outputs)):
                return False
            changed = False
    if changed:
        moved = distributed.on_main(
            lambda: previous.move_aside(run.layout, key, aside, run.manifest["stages"].get(key))
        )
        where = f"; the previous outputs are kept in {moved}" if moved else ""
        what = "the data files changed" if data_changed else "inputs changed"
        click.echo(f"[{key}] {what} since the last run: recomputing{where}")
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
    }
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


def any_complete(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a manifest with at least one completed stage."""
    path = RunLayout(run_dir).manifest
    if not path.is_file():
        return False
    return any(entry.get("status") == "complete" for entry in read_json(path).get("stages", {}).values())
