"""The ``distill`` command line: parse, call one stage function, print a short summary."""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import click

from distill.errors import DistillError

CONFIG = click.argument("config", type=click.Path(path_type=Path))
OVERRIDES = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, e.g. --set teacher.training.epochs=1 (repeatable).",
)
RUN_DIR = click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run directory (default: runs/<config folder>-<config name>).",
)


def _default_run_dir(config_path: Path) -> Path:
    return Path("runs") / f"{config_path.resolve().parent.name}-{config_path.stem}"


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def _load(config_path: Path, overrides: tuple[str, ...]):
    from distill.config import load_config

    return load_config(config_path, list(overrides))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="distill")
def cli() -> None:
    """Distil a BERT teacher into small, fast students and export them to ONNX with a latency/accuracy report."""


@cli.command()
@CONFIG
@OVERRIDES
def validate(config: Path, overrides: tuple[str, ...]) -> None:
    """Check CONFIG, open its data and the teacher's config.json, and report every problem at once (or the data's
    rows, task kind and labels)."""
    cfg = _load(config, overrides)
    _quiet_libraries()
    from distill.preflight import check_all, data_summary, resolve_for_run

    data = check_all(cfg)
    names = [s.name for s in cfg.trained_students()]
    click.echo(f"{config}: valid ({len(names)} student(s) to train: {', '.join(names)})")
    for line in data_summary(data):
        click.echo(line)
    resolve_for_run(cfg, data)  # prints the budgets distill would choose for this data


PROCESSES = click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Train with N data-parallel processes on this machine (DDP: gloo on CPU, NCCL on GPU); the configured "
    "batch sizes stay global batch sizes.",
)


NODES = (
    click.option("--nnodes", type=click.IntRange(min=1), default=1, show_default=True, help="Machines training "
                 "together, each running this command with the same config, data and run directory (shared disk)."),
    click.option("--node-rank", type=click.IntRange(min=0), default=0, show_default=True,
                 help="This machine's number, 0 to nnodes - 1; node 0 writes the run directory."),
    click.option("--rdzv-endpoint", default=None, metavar="HOST:PORT",
                 help="Where the nodes meet: an address and free port of node 0 that every node can reach."),
)  # fmt: skip


def _stage_command(name: str, stages: tuple[str, ...], help_text: str) -> Callable[..., None]:
    def command(
        config: Path,
        run_dir: Path | None,
        overrides: tuple[str, ...],
        processes: int = 1,
        nnodes: int = 1,
        node_rank: int = 0,
        rdzv_endpoint: str | None = None,
    ) -> None:
        cfg = _load(config, overrides)
        _quiet_libraries()
        from distill import distributed
        from distill.pipeline import run_pipeline, run_pipeline_parallel

        target = run_dir or _default_run_dir(config)
        nodes = distributed.Nodes(nnodes, node_rank, rdzv_endpoint)
        nodes.check()
        if (processes > 1 or nodes.count > 1) and "WORLD_SIZE" not in os.environ:
            arguments = ["-m", "distill", name, str(config), "--run-dir", str(target)]
            arguments += [item for override in overrides for item in ("--set", override)]
            run_pipeline_parallel(cfg, target, processes, arguments, nodes)  # rank 0 prints the summary
            return
        distributed.init_from_environment()
        run_pipeline(cfg, target, stages)
        click.echo(f"done: {', '.join(stages)} in {target}")

    if set(stages) & {"teacher", "train"}:
        for option in (PROCESSES, *NODES):
            command = option(command)
    return cli.command(name=name, help=help_text)(CONFIG(RUN_DIR(OVERRIDES(command))))


_stage_command(
    "run",
    ("teacher", "train", "export", "bench", "report"),
    "Run every stage of CONFIG in order, skipping completed ones and resuming an interrupted one.",
)
_stage_command("teacher", ("teacher",), "Load, fine-tune if needed, evaluate and gate the teacher.")
_stage_command("train", ("train",), "Distil every student from the teacher.")
_stage_command("export", ("export",), "Export teacher and students to ONNX and check them against PyTorch.")
_stage_command("bench", ("bench",), "Measure latency, size and accuracy of every artifact.")
_stage_command("report", ("report",), "Write report.md and the plots from the benchmark results.")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1, required=True)
@click.option("--pair", "pairs", multiple=True, help="Second text of a sentence pair, once per TEXT.")
@click.option("--model-file", default=None, help="ONNX file in the bundle (default: the fastest one present).")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads.")
def predict(
    bundle: Path, texts: tuple[str, ...], pairs: tuple[str, ...], model_file: str | None, threads: int | None
) -> None:
    """Classify TEXTS with an exported BUNDLE (onnxruntime and tokenizers only; torch is not imported)."""
    import json

    from distill.errors import ConfigError
    from distill.runtime import OnnxClassifier

    if pairs and len(pairs) != len(texts):
        raise ConfigError(f"got {len(texts)} text(s) but {len(pairs)} --pair value(s); give one --pair per text")
    for index, text in enumerate([*texts, *pairs]):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"argument {index + 1} is not valid UTF-8 text; pass the text in UTF-8") from None
    classifier = OnnxClassifier(bundle, model_file=model_file, threads=threads)
    try:
        results = classifier.predict(list(texts), list(pairs) or None)
    except ValueError as err:  # a question the model cannot answer: one sentence, no traceback
        raise ConfigError(str(err)) from None
    for text, result in zip(texts, results, strict=True):
        click.echo(json.dumps({"text": text, **result}))


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Also write OUT.md and OUT.json.")
def compare(run_dirs: tuple[Path, ...], out: Path | None) -> None:
    """One table across finished RUN_DIRS: teacher, students and twins with intervals, latency and size."""
    from distill.report.compare import write_comparison

    click.echo(write_comparison(list(run_dirs), out), nl=False)


@cli.command()
@click.argument("target", metavar="RUN_DIR|BUNDLE", type=click.Path(path_type=Path))
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Config whose data section reads FILE (default: the run's config.yaml; for a lone bundle, columns "
    "text, text_pair and label).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for evaluation.json and evaluation.md (default: RUN_DIR/evaluations/STEM, or "
    "evaluations/STEM-BUNDLE beside FILE).",
)
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads.")
def evaluate(target: Path, file: Path, config_path: Path | None, out: Path | None, threads: int | None) -> None:
    """Score every artifact of a finished RUN_DIR (or one BUNDLE) on a new labelled FILE, with bootstrap intervals."""
    _quiet_libraries()
    from distill.evaluate_file import evaluate_file

    json_path, markdown_path = evaluate_file(target, file, config_path, out, threads=threads)
    click.echo(markdown_path.read_text(encoding="utf-8"), nl=False)
    click.echo(f"wrote {markdown_path} and {json_path}")


DISK_ERRORS = {
    errno.ENOSPC: "free space on that disk (`df -h`)",
    errno.EDQUOT: "free space within your disk quota",
    errno.EROFS: "pass a --run-dir on a writable disk",
    errno.EACCES: "pass a --run-dir you may write to",
}
"""Errors of the disk a run writes to, with their fix: one sentence instead of a traceback."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that the stage in progress is marked interrupted and files being
    written are left as their atomic writes leave them: whole or absent."""


_TERMINATED: list[int] = []
"""Holds the signal once SIGTERM arrived (click turns the exception into ``Abort`` on its way out)."""


def _terminate(signum: int, frame: object) -> None:
    _TERMINATED.append(signum)
    raise Terminated


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit status 1, without a traceback."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:  # ranks are stopped by their launcher, which reports it
        signal.signal(signal.SIGTERM, _terminate)
    try:
        cli.main(standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        if _TERMINATED:
            click.echo("terminated (SIGTERM); rerun the same command to resume", err=True)
            sys.exit(143)
        click.echo("interrupted; rerun the same command to resume", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except DistillError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    except OSError as err:
        if err.errno not in DISK_ERRORS:
            raise
        where = f" writing {err.filename}" if err.filename else ""
        click.echo(
            f"error: {os.strerror(err.errno).lower()}{where}; {DISK_ERRORS[err.errno]}, then rerun the same command "
            "to resume (finished stages and the last complete checkpoint are kept)",
            err=True,
        )
        sys.exit(1)
    except RuntimeError as err:
        from distill import distributed

        if not distributed.lost_peer(err):
            raise
        click.echo(f"error: rank {distributed.rank()} lost contact with another process of this run", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
