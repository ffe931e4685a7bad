"""Stage order, input fingerprints, skip/resume logic and the run manifest.

A stage whose fingerprint (its config section plus its upstream stages' fingerprints) matches a completed
entry in ``manifest.json``, and whose outputs exist, is skipped. A stage that was interrupted resumes from its
checkpoints when rerun with the same inputs; one whose inputs changed starts again from scratch.

In a data-parallel run (:mod:`distill.distributed`) every rank walks the training stages in step: each stage
starts and ends with a barrier, rank 0 alone writes the manifest and the stage outputs, and the other ranks
stop after the last training stage.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import click

from distill import distributed
from distill.config import Config, dump_config
from distill.data import TaskData, load_task_data
from distill.errors import DistillError, GateError, StageError
from distill.files import fingerprint, read_json, write_json, write_text

STAGES = ("teacher", "train", "export", "bench", "report")
"""Every stage, in order; ``train`` covers one manifest entry per student (``student:NAME``)."""

TRAINING_STAGES = ("teacher", "train")
"""The stages every rank of a data-parallel run takes part in; rank 0 runs the others alone."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@dataclass
class Run:
    """One run directory and the config it runs; holds the manifest and the lazily loaded data."""

    config: Config
    run_dir: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def data(self) -> TaskData:
        return load_task_data(self.config.data, self.config.task, self.config.seed)

    @property
    def manifest_path(self) -> Path:
        return self.run_dir / "manifest.json"

    def save_manifest(self) -> None:
        write_json(self.manifest_path, self.manifest)

    # fingerprints: each stage's own config section plus its upstream fingerprints
    def teacher_fingerprint(self) -> str:
        c = self.config
        # an unset teacher.seeds leaves the fingerprint of runs made before the option existed unchanged
        teacher = c.teacher.model_dump(mode="json", exclude={"seeds"} if c.teacher.seeds is None else None)
        return fingerprint("teacher", c.task, c.seed, c.data.model_dump(mode="json"), teacher)

    def student_fingerprint(self, name: str, seed: int | None = None) -> str:
        """The fingerprint of student ``name``: trained with ``seed``, or, with ``seed`` None, the finished student
        (with several ``seeds``: the selection over every seed's run)."""
        student = next(s for s in self.config.trained_students() if s.name == name)
        spec = student.model_dump(mode="json")
        if self.config.seeds is None:  # one seed, config.seed (already in the teacher's fingerprint)
            return fingerprint("student", self.teacher_fingerprint(), spec)
        if seed is not None:
            return fingerprint("student", self.teacher_fingerprint(), spec, seed)
        return fingerprint("seeds", [self.student_fingerprint(name, s) for s in self.config.student_seeds()])

    def export_fingerprint(self) -> str:
        students = [self.student_fingerprint(s.name) for s in self.config.trained_students()]
        return fingerprint("export", self.teacher_fingerprint(), students, self.config.export.model_dump(mode="json"))

    def bench_fingerprint(self) -> str:
        measured = self.config.bench.model_dump(mode="json", exclude={"gates"})  # gates judge, they do not measure
        return fingerprint("bench", self.export_fingerprint(), measured)

    def report_fingerprint(self) -> str:
        return fingerprint("report", self.bench_fingerprint())


def open_run(config: Config, run_dir: Path) -> Run:
    """Open (or create) ``run_dir`` for ``config``: checks the data first, so bad input writes nothing."""
    run = Run(config=config, run_dir=run_dir)
    run.data  # noqa: B018 - load and validate the data before anything is written
    from distill.teacher import resolve_source

    resolve_source(config.teacher.source)
    if run.manifest_path.is_file():
        run.manifest = read_json(run.manifest_path)
    else:
        run.manifest = {"created": _now(), "stages": {}}
    return run


def _environment() -> dict[str, Any]:
    from distill.bench import host_info, library_versions

    return {
        "versions": library_versions(),
        "host": host_info(),
        "git_sha": _git_sha(),
        "processes": distributed.world_size(),
    }


def _run_stage(
    run: Run,
    key: str,
    digest: str,
    outputs: list[Path],
    work: Callable[[], Any],
    clear: Path | None = None,
    collective: bool = True,
) -> bool:
    """Run ``work`` unless the stage is complete with the same fingerprint; returns whether it ran.

    ``clear`` is a directory holding this stage's partial outputs; it is wiped when the inputs changed,
    and kept (for resumption) when an interrupted stage is rerun with the same inputs. In a data-parallel run,
    every rank runs ``work`` when ``collective`` (training), otherwise rank 0 alone; the others wait for it.
    """
    entry = run.manifest["stages"].get(key)
    complete = (
        entry
        and entry.get("fingerprint") == digest
        and entry.get("status") == "complete"
        and all(p.exists() for p in outputs)
    )
    if distributed.broadcast(bool(complete)):  # every rank takes rank 0's decision
        click.echo(f"[{key}] complete, inputs unchanged: skipped")
        return False
    main = distributed.is_main()
    if entry and entry.get("fingerprint") != digest:
        click.echo(f"[{key}] inputs changed since the last run: recomputing (previous outputs replaced)")
        if main and clear is not None and clear.exists():
            shutil.rmtree(clear)
    elif entry and entry.get("status") != "complete":
        click.echo(f"[{key}] resuming an interrupted run")
    elif entry:
        click.echo(f"[{key}] outputs missing from the run directory: recomputing")
    started = time.time()
    run.manifest["stages"][key] = {"status": "running", "fingerprint": digest, "started": _now()}
    if main:
        run.save_manifest()
    distributed.barrier()
    if not main:
        if collective:
            work()
        distributed.barrier()  # rank 0 finishes the stage: evaluation, outputs, manifest
        run.manifest = read_json(run.manifest_path)
        return True
    try:
        summary = work()
    except BaseException as err:
        run.manifest["stages"][key].update(
            status="failed", error=str(err).splitlines()[0] if str(err) else type(err).__name__
        )
        run.save_manifest()
        raise
    run.manifest["stages"][key] = {
        "status": "complete",
        "fingerprint": digest,
        "started": run.manifest["stages"][key]["started"],
        "finished": _now(),
        "seconds": round(time.time() - started, 1),
        "environment": _environment(),
        "summary": summary,
    }
    run.save_manifest()
    distributed.barrier()
    return True


def _require(run: Run, key: str, digest: str, command: str) -> None:
    """Refuse to run a stage whose upstream stage is missing or was completed with other inputs."""
    entry = run.manifest["stages"].get(key)
    if not entry or entry.get("status") != "complete":
        raise StageError(
            f"stage {key} has not completed in {run.run_dir}; run `distill {command}` (or `distill run`) first"
        )
    if entry.get("fingerprint") != digest:
        raise StageError(
            f"stage {key} in {run.run_dir} was completed with a different config; rerun `distill {command}` "
            "(or `distill run`) with this config first"
        )


def stage_teacher(run: Run) -> None:
    """Load, fine-tune when needed, evaluate and gate the teacher into ``RUN/teacher``."""
    from distill.teacher import run_teacher_stage

    teacher_dir = run.run_dir / "teacher"

    def work() -> dict[str, Any] | None:
        record = run_teacher_stage(run.config, run.data, teacher_dir)
        if record is None:  # a follower rank: its share of the fine-tuning is done
            return None
        candidates = record.get("candidates")
        chosen = f", best of {len(candidates['seeds'])} seeds: seed {candidates['chosen_seed']}" if candidates else ""
        click.echo(
            f"[teacher] dev {record['main_metric']} {record['metrics'][record['main_metric']]:.4f} "
            f"(majority baseline {record['majority_baseline'].get(record['main_metric'], float('nan')):.4f}{chosen})"
        )
        return {
            "metrics": record["metrics"],
            "finetuned_here": record["finetuned_here"],
            **({"chosen_seed": candidates["chosen_seed"]} if candidates else {}),
        }

    _run_stage(run, "teacher", run.teacher_fingerprint(), [teacher_dir / "eval.json"], work, clear=teacher_dir)


def stage_train(run: Run, names: Iterable[str] | None = None) -> None:
    """Train every configured student and label-only twin (or only ``names``) into ``RUN/students/NAME``.

    With several ``seeds``, each seed trains into ``RUN/students/NAME/seeds/SEED`` (manifest key
    ``student:NAME@SEED``), then the seed with the best dev metric is copied to ``RUN/students/NAME``.
    """
    from distill.students import run_student_stage, select_best_seed

    _require(run, "teacher", run.teacher_fingerprint(), "teacher")
    wanted = set(names) if names else None
    seeds = run.config.student_seeds()
    for student in run.config.trained_students():
        if wanted is not None and student.name not in wanted:
            continue
        student_dir = run.run_dir / "students" / student.name
        several = run.config.seeds is not None and len(seeds) > 1
        for seed in seeds:
            unit_dir = student_dir / "seeds" / str(seed) if several else student_dir
            label = f"{student.name}@{seed}" if several else student.name

            def work(student=student, unit_dir=unit_dir, seed=seed, label=label) -> dict[str, Any] | None:
                config = run.config.model_copy(update={"seed": seed})
                record = run_student_stage(
                    config, student, run.data, run.run_dir / "teacher", unit_dir, run.run_dir / "cache"
                )
                if record is None:  # a follower rank: its share of the training is done
                    return None
                click.echo(
                    f"[student:{label}] dev {record['main_metric']} "
                    f"{record['metrics'][record['main_metric']]:.4f}, agreement with teacher "
                    f"{record['agreement_with_teacher']:.4f}"
                )
                return {"metrics": record["metrics"], "agreement_with_teacher": record["agreement_with_teacher"]}

            _run_stage(
                run,
                f"student:{label}",
                run.student_fingerprint(student.name, seed if several else None),
                [unit_dir / "eval.json"],
                work,
                clear=unit_dir,
            )
        if several:

            def select(student=student, student_dir=student_dir) -> dict[str, Any]:
                record = select_best_seed(student_dir, seeds, run.data.main_metric)
                click.echo(
                    f"[student:{student.name}] seed {record['selected_seed']} has the best dev "
                    f"{record['main_metric']} of seeds {seeds}: its model is the one exported"
                )
                return {"selected_seed": record["selected_seed"], "metrics": record["metrics"]}

            _run_stage(
                run,
                f"student:{student.name}",
                run.student_fingerprint(student.name),
                [student_dir / "eval.json"],
                select,
                collective=False,
            )


def _model_names(run: Run) -> list[str]:
    return ["teacher", *(s.name for s in run.config.trained_students())]


def _model_dir(run: Run, name: str) -> Path:
    return run.run_dir / "teacher" if name == "teacher" else run.run_dir / "students" / name


def stage_export(run: Run) -> None:
    """Export the teacher and every student to ``RUN/onnx/NAME``, check them against PyTorch, then optimise and
    quantise each bundle within its fidelity budget."""
    import numpy as np
    from transformers import AutoTokenizer

    from distill.data import tokenize
    from distill.evaluate import MODEL_INPUTS
    from distill.export import export_onnx
    from distill.optimize import optimize_bundle

    for student in run.config.trained_students():
        _require(run, f"student:{student.name}", run.student_fingerprint(student.name), "train")
    outputs = [run.run_dir / "onnx" / name / "fidelity.json" for name in _model_names(run)]

    def work() -> dict[str, Any]:
        export = run.config.export
        tokenizer = AutoTokenizer.from_pretrained(run.run_dir / "teacher")
        validation = tokenize(run.data.validation, tokenizer, run.config.data.max_length)
        columns = [name for name in MODEL_INPUTS if name in validation.column_names]
        dev_rows = validation.select_columns(columns).to_list()
        calibration_rows: list[dict[str, list[int]]] = []
        if export.int8.enabled and export.int8.mode == "static":
            sample = run.data.train.shuffle(seed=run.config.seed).select(
                range(min(export.int8.calibration_examples, len(run.data.train)))
            )
            calibration_rows = tokenize(sample, tokenizer, run.config.data.max_length).select_columns(columns).to_list()
        labels = np.asarray(run.data.validation["label"])
        teacher_logits = np.load(run.run_dir / "teacher" / "dev_logits.npy")
        summary = {}
        for name in _model_names(run):
            bundle = run.run_dir / "onnx" / name
            fidelity = export_onnx(_model_dir(run, name), bundle, export, validation, teacher_logits)
            variants = optimize_bundle(bundle, export, dev_rows, labels, run.data.metrics, calibration_rows)
            summary[name] = {
                "max_abs_diff": fidelity["max_abs_diff"],
                "agreement_with_pytorch": fidelity["agreement_with_pytorch"],
                "optimized_kept": variants["optimized"].get("kept"),
                "int8_kept": variants["int8"].get("kept"),
            }
            click.echo(f"[export] {name}: {summary[name]}")
        return summary

    _run_stage(run, "export", run.export_fingerprint(), outputs, work)


def stage_bench(run: Run) -> None:
    """Benchmark every artifact (PyTorch and ONNX Runtime) into ``RUN/bench/results.json``."""
    from transformers import AutoTokenizer

    from distill.bench import Artifact, benchmark_artifacts
    from distill.data import tokenize
    from distill.runtime import MODEL_FILES

    _require(run, "export", run.export_fingerprint(), "export")
    results = run.run_dir / "bench" / "results.json"

    def work() -> dict[str, Any]:
        artifacts = []
        for name in _model_names(run):
            role = "teacher" if name == "teacher" else "student"
            artifacts.append(Artifact(name, "pytorch", "fp32", _model_dir(run, name), role))
            bundle = run.run_dir / "onnx" / name
            for file_name, precision in reversed(MODEL_FILES.items()):  # fp32 first, then faster variants
                if (bundle / file_name).is_file():
                    artifacts.append(Artifact(name, "onnxruntime", precision, bundle / file_name, role))
        tokenizer = AutoTokenizer.from_pretrained(run.run_dir / "teacher")
        validation = tokenize(run.data.validation, tokenizer, run.config.data.max_length)
        benchmark_artifacts(
            artifacts,
            validation,
            run.data.metrics,
            "teacher",
            run.config.bench,
            results,
            is_regression=run.data.is_regression,
        )
        return {"results": str(results.relative_to(run.run_dir))}

    _run_stage(run, "bench", run.bench_fingerprint(), [results], work)


def stage_report(run: Run) -> None:
    """Write ``RUN/report.md`` and the plots from the benchmark results."""
    from distill.report import write_report

    _require(run, "bench", run.bench_fingerprint(), "bench")
    report = run.run_dir / "report.md"

    def work() -> dict[str, Any]:
        from distill.compare import run_statistics

        run_statistics(run.run_dir, run.data.validation["label"], run.data.metrics, seed=run.config.seed)
        path = write_report(run.run_dir)
        click.echo(f"[report] {path}")
        return {"report": str(path.relative_to(run.run_dir))}

    _run_stage(run, "report", run.report_fingerprint(), [report], work)


STAGE_FUNCTIONS: dict[str, Callable[[Run], None]] = {
    "teacher": stage_teacher,
    "train": stage_train,
    "export": stage_export,
    "bench": stage_bench,
    "report": stage_report,
}


def run_pipeline(config: Config, run_dir: Path, stages: Iterable[str] = STAGES) -> Run:
    """Run ``stages`` in order in ``run_dir``, skipping completed ones; the entry point of ``distill run``.

    A run directory created by this call is removed again if it fails before any stage completes, so bad
    input leaves nothing behind.
    """
    main = distributed.is_main()
    created = not run_dir.exists()
    try:
        run = open_run(config, run_dir)
        distributed.barrier()  # every rank has read the manifest before rank 0 writes to the run directory
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text(run_dir / "config.yaml", dump_config(config))
            run.save_manifest()
        for stage in stages:
            if stage not in TRAINING_STAGES:
                distributed.leave()  # the other ranks are done: rank 0 exports, benchmarks and reports alone
                if not main:
                    break
            STAGE_FUNCTIONS[stage](run)
        distributed.leave()  # (after training-only commands) a live process group at exit can abort the process
        if "bench" in stages and main:
            check_gates(run)
    except DistillError:
        if main and created and run_dir.exists() and not _any_complete(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run


def run_pipeline_parallel(config: Config, run_dir: Path, processes: int, arguments: list[str]) -> None:
    """Run ``python ARGUMENTS`` (a ``distill`` stage command for ``config`` and ``run_dir``) as ``processes``
    data-parallel ranks, after checking here what would make every rank fail: the data, the teacher source and
    batch sizes that do not split evenly. Nothing is written before the ranks start.
    """
    distributed.check_batch_sizes(config.batch_sizes(), processes)
    open_run(config, run_dir)
    distributed.launch(arguments, processes)


def check_gates(run: Run) -> None:
    """Raise :class:`GateError` when a configured ``bench.gates`` threshold fails (results stay on disk)."""
    from distill.bench import gate_failures

    failures = gate_failures(read_json(run.run_dir / "bench" / "results.json"), run.config.bench.gates)
    if failures:
        raise GateError(
            f"{len(failures)} CI gate(s) failed: " + "; ".join(failures) + "; see report.md, or relax bench.gates"
        )
    if any(value is not None for value in run.config.bench.gates.model_dump().values()):
        click.echo("[gates] every configured gate passed")


def _any_complete(run_dir: Path) -> bool:
    manifest = run_dir / "manifest.json"
    if not manifest.is_file():
        return False
    return any(entry.get("status") == "complete" for entry in read_json(manifest).get("stages", {}).values())
