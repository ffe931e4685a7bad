"""``distill evaluate``: score a finished run's artifacts, or one bundle, on a new labelled file.

A run directory contributes every ONNX file of every bundle in ``RUN/onnx/*/`` and its PyTorch teacher
(``RUN/teacher``), the reference for agreement and for paired intervals; a lone bundle contributes its ONNX files.
The file is read as training read its files (:func:`distill.data.load_task_data`: any supported format, the same
columns), with the config of the run (``RUN/config.yaml``), the one given with ``--config``, or for a lone bundle
the columns ``text`` (``text_pair`` for a pair model) and ``label``. Labels are the bundle's (``config.json``'s
``id2label``); a file with a label the model does not know is refused.

Writes ``evaluation.json`` and ``evaluation.md`` to ``--out``, by default ``RUN/evaluations/STEM/`` for a run and
``evaluations/STEM-BUNDLE/`` beside the file for a lone bundle (``STEM``: the file's name without its suffix).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from distill.config import Config, DataConfig, load_config
from distill.data import TaskData, load_task_data, read_table
from distill.errors import DataError, StageError
from distill.files import write_json, write_text
from distill.layout import CONFIG_FILE, TEACHER, TWIN_SUFFIX, RunLayout
from distill.metrics import agreement, compute_metrics, predictions_from_logits
from distill.report.evaluation import evaluation_markdown
from distill.report.statistics import bootstrap_interval, paired_bootstrap
from distill.runtime import MODEL_FILES, TEXT_PAIR_KEY, OnnxClassifier
from distill.tasks import GLUE_TASKS

JSON_FILE, MARKDOWN_FILE = "evaluation.json", "evaluation.md"


@dataclass(frozen=True)
class Target:
    """What to score: bundles by name, the PyTorch teacher of a run (or None), and the config that reads the file."""

    path: Path
    bundles: dict[str, Path]
    teacher_dir: Path | None
    config: Config | None
    is_run: bool


@dataclass(frozen=True)
class Scored:
    """One artifact's predictions on the file: class ids ``(n,)`` or scores for regression."""

    name: str
    role: str
    runtime: str
    precision: str
    predictions: np.ndarray


def _holds_onnx(directory: Path) -> bool:
    return (directory / "config.json").is_file() and any((directory / name).is_file() for name in MODEL_FILES)


def resolve_target(path: Path, config_path: Path | None = None) -> Target:
    """A finished run directory (``config.yaml`` and bundles in ``onnx/``) or one bundle (``config.json`` and an
    ONNX model); ``config_path`` replaces the run's config for reading the file.

    Raises:
        StageError: ``path`` is neither, or a run without exported bundles.
    """
    config = load_config(config_path) if config_path is not None else None
    layout = RunLayout(path)
    if layout.config.is_file():
        bundles = {d.name: d for d in sorted(layout.onnx.glob("*")) if _holds_onnx(d)}
        if not bundles:
            raise StageError(f"run {path} has no exported bundle in {layout.onnx}; run `distill export` on it first")
        bundles = {name: bundles[name] for name in sorted(bundles, key=lambda name: (name != TEACHER, name))}
        teacher = layout.teacher if (layout.teacher / "config.json").is_file() else None
        return Target(path, bundles, teacher, config or load_config(layout.config), is_run=True)
    if _holds_onnx(path):
        return Target(path, {path.name: path}, None, config, is_run=False)
    raise StageError(
        f"{path} is neither a run directory (with {CONFIG_FILE} and onnx/) nor a bundle (with config.json and an "
        "ONNX model); pass one written by `distill run` or `distill export`"
    )


def bundle_labels(bundle: Path, config: Config | None) -> tuple[list[str] | None, bool | None]:
    """The bundle's class names in id order (None for regression) and whether it reads sentence pairs (None when
    unrecorded). Generic ``LABEL_i`` names give way to the config's (``data.label_names`` or the task preset's)."""
    settings = json.loads((bundle / "config.json").read_text(encoding="utf-8"))
    id2label = {int(i): str(name) for i, name in settings.get("id2label", {}).items()}
    if settings.get("problem_type") == "regression" or len(id2label) == 1:
        return None, settings.get(TEXT_PAIR_KEY)
    count = len(id2label) or 2  # transformers leaves out its default: two labels, LABEL_0 and LABEL_1
    names = [id2label.get(i, f"LABEL_{i}") for i in range(count)]
    preset = GLUE_TASKS.get(config.task) if config is not None and config.task else None
    configured = (config.data.label_names if config is not None else None) or (preset.label_names if preset else None)
    generic = all(name == f"LABEL_{i}" for i, name in enumerate(names))
    if generic and configured is not None and len(configured) == len(names):
        names = list(configured)
    return names, settings.get(TEXT_PAIR_KEY)


def _unknown_labels(values: list[str], names: list[str]) -> list[str]:
    """Labels that are neither one of ``names`` nor a whole-number index into them (as training reads labels)."""
    unknown = set()
    for value in set(values):
        if value in names:
            continue
        try:
            number = float(value)
        except ValueError:
            unknown.add(value)
            continue
        if not (number.is_integer() and 0 <= number < len(names)):
            unknown.add(value)
    return sorted(unknown)


def _check_labels(file: Path, cfg: DataConfig, task: str | None, names: list[str], where: Path) -> None:
    """Refuse ``file`` in one sentence when it has a label the model at ``where`` does not know."""
    preset = GLUE_TASKS.get(task) if task else None
    reference = cfg.label_column if cfg.label_column is not None else (preset.label_column if preset else None)
    frame = read_table(file, cfg.format, cfg.header, cfg.quoting)
    if isinstance(reference, int):
        reference = frame.columns[reference] if reference < len(frame.columns) else None
    if reference is None or reference not in frame.columns:
        return  # loading the file names the missing column
    unknown = _unknown_labels(frame[reference].astype(str).str.strip().tolist(), names)
    if unknown:
        shown = ", ".join(repr(label) for label in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise DataError(
            f"{file} has label(s) {shown} that {where} does not know (its labels are {names}); score it with a model "
            "trained on these labels, or relabel the file with the model's labels"
        )


def load_file(file: Path, target: Target, names: list[str] | None, pair: bool | None) -> TaskData:
    """The labelled ``file`` as the ``validation`` split of a :class:`TaskData`, labels encoded as the bundle's."""
    config = target.config
    if config is not None:
        cfg, task = config.data, config.task
    else:
        pair_column = "text_pair" if pair else None
        cfg, task = DataConfig(train=file, validation=file, text_column="text", label_column="label"), None
        cfg = cfg.model_copy(update={"text_pair_column": pair_column})
    cfg = cfg.model_copy(
        update={
            "train": file,
            "validation": file,
            "hub_dataset": None,
            "train_limit": None,
            "validation_limit": None,
            "label_names": names,
            "problem_type": "regression" if names is None else "classification",
        }
    )
    if names is not None:
        _check_labels(file, cfg, task, names, target.path)
    data = load_task_data(cfg, task)
    if pair is not None and pair != data.has_pair:
        needs = "sentence pairs, but the file is read without" if pair else "single texts, but the file is read with"
        raise DataError(
            f"{target.path} reads {needs} a second text column; set data.text_pair_column in the config given with "
            "--config to match the model"
        )
    return data


def _score(target: Target, data: TaskData, max_length: int | None, threads: int | None) -> list[Scored]:
    """Predictions of the PyTorch teacher (first, when the run has one) and of every ONNX file of every bundle."""
    texts = data.validation["text"]
    pairs = data.validation["text_pair"] if data.has_pair else None
    scored = []
    if target.teacher_dir is not None:
        predictions = _pytorch_predictions(target.teacher_dir, data, max_length or 512)
        scored.append(Scored(TEACHER, "teacher", "pytorch", "fp32", predictions))
        click.echo(f"[evaluate] {TEACHER} (pytorch) scored")
    for name, bundle in target.bundles.items():
        for file_name, precision in reversed(MODEL_FILES.items()):  # fp32 first, as the report lists them
            if not (bundle / file_name).is_file():
                continue
            classifier = OnnxClassifier(bundle, model_file=file_name, threads=threads, max_length=max_length)
            try:
                logits = classifier.logits(texts, pairs)
            except ValueError as err:  # an empty text, or pairs the model does not read
                raise DataError(f"cannot score the file with {bundle}: {err}") from None
            role = ("teacher" if name == TEACHER else "student") if target.is_run else "bundle"
            scored.append(Scored(name, role, "onnxruntime", precision, predictions_from_logits(logits)))
            click.echo(f"[evaluate] {name} ({precision}) scored")
    return scored


def _pytorch_predictions(model_dir: Path, data: TaskData, max_length: int) -> np.ndarray:
    """The PyTorch model's predictions on the file, inputs truncated to ``max_length`` tokens as in training."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill.data import tokenize
    from distill.evaluate import predict_logits

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
    limit = min(max_length, model.config.max_position_embeddings)
    rows = tokenize(data.validation, tokenizer, limit)
    return predictions_from_logits(predict_logits(model, rows, tokenizer, desc="teacher"))


def summarise(
    scored: list[Scored], labels: np.ndarray, metrics: list[str], regression: bool, resamples: int = 2000
) -> list[dict[str, Any]]:
    """One entry per artifact: every metric, the main metric's bootstrap interval, agreement with the teacher's
    PyTorch model and the paired-bootstrap difference from it, and for a student the gain over its twin (same
    runtime and precision)."""
    main = metrics[0]
    reference = next((s for s in scored if s.role == "teacher" and s.runtime == "pytorch"), None)
    by_key = {(s.name, s.runtime, s.precision): s for s in scored}
    rows = []
    for item in scored:
        row: dict[str, Any] = {
            "name": item.name,
            "role": item.role,
            "runtime": item.runtime,
            "precision": item.precision,
            "metrics": compute_metrics(metrics, item.predictions, labels),
            "interval": bootstrap_interval(item.predictions, labels, main, resamples).to_dict(),
        }
        if reference is not None:
            row["agreement_with_teacher"] = agreement(item.predictions, reference.predictions, regression)
            if item is not reference:
                versus = paired_bootstrap([item.predictions], [reference.predictions], labels, main, resamples)
                row["vs_teacher"] = versus.to_dict()
        twin = by_key.get((item.name + TWIN_SUFFIX, item.runtime, item.precision))
        if twin is not None:
            gain = paired_bootstrap([item.predictions], [twin.predictions], labels, main, resamples)
            row["gain_over_twin"] = {"twin": twin.name, **gain.to_dict()}
        rows.append(row)
    return rows


def default_out(target: Target, file: Path) -> Path:
    """``RUN/evaluations/STEM`` for a run, ``evaluations/STEM-BUNDLE`` beside the file for a lone bundle."""
    if target.is_run:
        return RunLayout(target.path).evaluations / file.stem
    return file.parent / "evaluations" / f"{file.stem}-{target.path.resolve().name}"


def evaluate_file(
    path: Path,
    file: Path,
    config_path: Path | None = None,
    out: Path | None = None,
    resamples: int = 2000,
    threads: int | None = None,
) -> tuple[Path, Path]:
    """Score the run or bundle at ``path`` on the labelled ``file``; write ``evaluation.json`` and ``evaluation.md``.

    Returns:
        The paths of the JSON and Markdown files written.
    Raises:
        DataError: a file that cannot be read, or whose labels the model does not know.
        StageError: ``path`` is not a finished run or a bundle.
    """
    target = resolve_target(Path(path), config_path)
    names, pair = bundle_labels(next(iter(target.bundles.values())), target.config)
    data = load_file(Path(file), target, names, pair)
    max_length = target.config.data.max_length if target.config is not None else None
    labels = np.asarray(data.validation["label"])
    scored = _score(target, data, max_length, threads)
    result = {
        "target": str(target.path),
        "file": str(file),
        "examples": int(labels.shape[0]),
        "labels": names,
        "metric_names": list(data.metrics),
        "reference": "teacher (pytorch, fp32)" if target.teacher_dir is not None else None,
        "bootstrap_resamples": resamples,
        "artifacts": summarise(scored, labels, list(data.metrics), data.is_regression, resamples),
    }
    out_dir = Path(out) if out is not None else default_out(target, Path(file))
    write_json(out_dir / JSON_FILE, result)
    write_text(out_dir / MARKDOWN_FILE, evaluation_markdown(result))
    return out_dir / JSON_FILE, out_dir / MARKDOWN_FILE
