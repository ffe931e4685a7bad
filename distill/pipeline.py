"""Stage order: each stage calls one module function; the run directory, the manifest and the ranks are handled here
and in :mod:`distill.manifest`, so domain modules never ask which rank they are.

In a data-parallel run (:mod:`distill.distributed`) every rank walks the training stages in step; rank 0 alone
writes the manifest and the stage outputs, and the other ranks stop after the last training stage.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from pathlib import Path

import click

from distill import distributed
from distill.config import Config, dump_config
from distill.errors import TeacherError
from distill.files import write_text
from distill.layout import EVAL_FILE, TEACHER
from distill.lock import claim
from distill.manifest import Run, StageResult, open_run, require, run_stage
from distill.preflight import preflight, resolve_for_run

__all__ = ["STAGES", "Run", "open_run", "run_pipeline", "run_pipeline_parallel"]

STAGES = ("teacher", "train", "export", "bench", "report")
"""Every stage, in order; ``train`` covers one manifest entry per student (``student:NAME``)."""

TRAINING_STAGES = ("teacher", "train")
"""The stages every rank of a data-parallel run takes part in; rank 0 runs the others alone."""


def _model_names(run: Run) -> list[str]:
    return [TEACHER, *(student.name for student in run.config.trained_students())]


def stage_teacher(run: Run) -> None:
    """Load, fine-tune when needed, evaluate and gate the teacher into ``RUN/teacher``."""
    from distill.records import TeacherEval
    from distill.teacher import gate, plan, run_teacher_stage

    def work() -> StageResult:
        record = run_teacher_stage(run.config, run.data, run.layout.teacher)
        return StageResult(record.summary(), record.line())

    layout = run.layout
    run_stage(run, "teacher", [layout.teacher_eval], work, plan(run.config, run.data), aside=[layout.teacher])
    refusal = distributed.is_main() and gate(TeacherEval.load(layout.teacher_eval), run.config.teacher.min_margin)
    if refusal:  # the other ranks stop at their next collective
        raise TeacherError(
            f"{refusal}; the teacher stays in {layout.teacher}, so a rerun with another margin reuses it"
        )


def stage_train(run: Run, names: Iterable[str] | None = None) -> None:
    """Train every configured student and label-only twin (or only ``names``) into ``RUN/students/NAME``.

    With several ``seeds``, each seed trains into ``RUN/students/NAME/seeds/SEED`` (manifest key
    ``student:NAME@SEED``), then the seed with the best dev metric is copied to ``RUN/students/NAME``.
    """
    from distill.students import plan
    from distill.students.stage import run_student_stage, select_best_seed

    require(run, "teacher", "teacher")
    wanted = set(names) if names else None
    seeds = run.config.student_seeds()
    several = run.config.seeds is not None and len(seeds) > 1
    for student in run.config.trained_students():
        if wanted is not None and student.name not in wanted:
            continue
        student_dir = run.layout.student(student.name)
        for seed in seeds:
            unit_dir = run.layout.student_seed(student.name, seed) if several else student_dir
            label = f"{student.name}@{seed}" if several else student.name

            def work(student=student, unit_dir=unit_dir, seed=seed) -> StageResult:
                config = run.config.model_copy(update={"seed": seed})
                record = run_student_stage(config, student, run.data, run.layout.teacher, unit_dir, run.layout.cache)
                return StageResult(record.summary(), record.line())

            start = plan(student, run.data) + (f", seed {seed}" if several else "")
            run_stage(run, f"student:{label}", [unit_dir / EVAL_FILE], work, start, aside=[unit_dir])
        if several:

            def select(student=student, student_dir=student_dir) -> StageResult:
                record = select_best_seed(student_dir, seeds, run.data.main_metric)
                return StageResult(record.summary(), f"seed {record.selected_seed} is exported, {record.line()}")

            start = f"choosing the seed of {seeds} with the best dev {run.data.main_metric}"
            run_stage(run, f"student:{student.name}", [student_dir / EVAL_FILE], select, start, collective=False)


def stage_export(run: Run) -> None:
    """Export the teacher and every student to ``RUN/onnx/NAME``, check them against PyTorch, then optimise and
    quantise each bundle within its fidelity budget."""
    from distill.deploy import export_models

    for student in run.config.trained_students():
        require(run, f"student:{student.name}", "train")
    names = _model_names(run)

    def work() -> StageResult:
        summary = export_models(run.config, run.data, run.layout, names)
        return StageResult(summary, f"{len(names)} bundle(s) in {run.layout.onnx}")

    start = f"exporting {len(names)} model(s) to ONNX and checking each on {len(run.data.validation):,} dev examples"
    outputs = [run.layout.fidelity(name) for name in names]
    run_stage(run, "export", outputs, work, start, aside=[run.layout.onnx])


def stage_bench(run: Run) -> None:
    """Benchmark every artifact (PyTorch and ONNX Runtime) into ``RUN/bench/results.json``."""
    from distill.bench import bench_models, plan

    require(run, "export", "export")

    def work() -> StageResult:
        return StageResult(*bench_models(run.config, run.data, run.layout, _model_names(run)))

    run_stage(run, "bench", [run.layout.results], work, plan(run.config.bench), aside=[run.layout.results])


def stage_report(run: Run) -> None:
    """Write ``RUN/report.md``, ``RUN/statistics.json``, the plots and every bundle's model card."""
    from distill.report import report_outputs, write_report
    from distill.report.statistics import run_statistics

    require(run, "bench", "bench")
    outputs = report_outputs(run.run_dir, _model_names(run))

    def work() -> StageResult:
        run_statistics(run.run_dir, run.data.validation["label"], run.data.metrics, seed=run.config.seed)
        path = write_report(run.run_dir)
        return StageResult({"report": str(path.relative_to(run.run_dir))}, f"written: {path}")

    start = "writing report.md, statistics.json, the plots and the model cards"
    run_stage(run, "report", outputs, work, start, aside=outputs)


STAGE_FUNCTIONS: dict[str, Callable[[Run], None]] = dict(
    zip(STAGES, (stage_teacher, stage_train, stage_export, stage_bench, stage_report), strict=True)
)


def run_pipeline(config: Config, run_dir: Path, stages: Iterable[str] = STAGES) -> Run:
    """Run ``stages`` in order in ``run_dir``, skipping completed ones; the entry point of ``distill run``.

    Budgets the config leaves unset are chosen for the data (:mod:`distill.budget`); every check that needs only
    the config, the data and the teacher's config runs first (:func:`distill.preflight.preflight`), so bad input
    writes nothing; the run directory is claimed first (:func:`distill.lock.claim`).
    """
    main = distributed.is_main()
    data = open_run(config, run_dir).data
    config, notes = resolve_for_run(config, data)
    preflight(config, data)  # reads only: bad input is reported before anything else
    with claim(run_dir) if main else contextlib.nullcontext():
        run = open_run(config, run_dir, data)  # the manifest as read under the lock
        run.record_budget(notes)
        return _run_stages(run, stages, main)


def _run_stages(run: Run, stages: Iterable[str], main: bool) -> Run:
    """:func:`run_pipeline`'s work, once the run directory is this process's."""
    config, run_dir = run.config, run.run_dir
    distributed.barrier()  # every rank has read the manifest before rank 0 writes to the run directory
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not run.layout.config.is_file():  # rewritten as each stage completes, so a refused run leaves it alone
            write_text(run.layout.config, dump_config(config))
        run.save_manifest()
    for stage in stages:
        if stage not in TRAINING_STAGES:
            distributed.leave()  # the other ranks are done: rank 0 exports, benchmarks and reports alone
            if not main:
                break
        STAGE_FUNCTIONS[stage](run)
    distributed.leave()  # (after training-only commands) a live process group at exit can abort the process
    if "bench" in stages and main:
        from distill.gates import check_gates
        from distill.records import BenchResults

        check_gates(BenchResults.load(run.layout.results), config.bench.gates)
    return run


def run_pipeline_parallel(
    config: Config, run_dir: Path, processes: int, arguments: list[str], nodes: distributed.Nodes = distributed.ONE
) -> None:
    """Run ``python ARGUMENTS`` (a ``distill`` stage command) as ``processes`` ranks on this node of ``nodes``, after
    the checks that would fail every rank (preflight, uneven batches); node 0 claims the run directory for all."""
    distributed.check_batch_sizes(config.batch_sizes(), processes * nodes.count)
    preflight(config, open_run(config, run_dir).data)
    with claim(run_dir, for_ranks=True) if nodes.rank == 0 else contextlib.nullcontext():
        where = f" on node {nodes.rank} of {nodes.count}" if nodes.count > 1 else ""
        click.echo(f"starting {processes} data-parallel process(es){where}")
        distributed.launch(arguments, processes, nodes)
