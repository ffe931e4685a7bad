"""The stage that trains any student (any recipe, distilled or label-only), evaluates it on dev and saves it; and
the choice of the best of several seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoTokenizer

from distill import distributed
from distill.config import Config
from distill.data import TaskData, tokenize
from distill.evaluate import evaluate_logits, predict_logits
from distill.files import copy_file, save_array
from distill.layout import DEV_LOGITS_FILE, EVAL_FILE, RECIPE_FILE, seed_dir
from distill.metrics import agreement, predictions_from_logits
from distill.records import StudentEval, StudentRecord
from distill.students.base import Recipe, StudentContext, StudentSpec, TrainedStudent
from distill.students.registry import recipe_for
from distill.train import remove_checkpoints, resolve_precision


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (tied weights counted once)."""
    return sum(parameter.numel() for parameter in model.parameters())


def run_student_stage(
    config: Config, spec: StudentSpec, data: TaskData, teacher_dir: Path, student_dir: Path, cache_dir: Path
) -> StudentEval:
    """Build one student from the saved teacher, train it (distilled, or on labels only), evaluate it, and save it
    to ``student_dir``.

    Writes ``student_dir``: the HF model and tokenizer, ``distill.json`` (recipe, architecture, layer map, losses
    and weights, training history, the model card's description), ``eval.json`` (dev metrics, agreement with the
    teacher) and ``dev_logits.npy``. Training state lives in ``student_dir/checkpoints`` (TinyBERT: ``stage1/``,
    ``stage2/``) until the student is saved, so a rerun resumes. ``cache_dir`` holds reusable derived data
    (augmented training sets, teacher logits). In a data-parallel run every rank trains; rank 0 alone evaluates
    and writes, and every rank returns its ``eval.json`` record.
    """
    from distill.budget import resolve_student

    # the pipeline chose the budgets already; a stage run on its own chooses them as the pipeline would
    config, spec = resolve_student(config, spec, data, AutoConfig.from_pretrained(teacher_dir))
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    validation = tokenize(data.validation, tokenizer, config.data.max_length)
    last_stage = list(spec.trainings().values())[-1]
    teacher_bf16 = resolve_precision(last_stage.precision)[0]
    context = StudentContext(
        config, spec, data, teacher_dir, student_dir, cache_dir, tokenizer, validation, teacher_bf16
    )
    recipe = recipe_for(spec)
    trained = recipe.train(context)
    return distributed.on_main(lambda: _evaluate_and_save(context, recipe, trained))


def _evaluate_and_save(context: StudentContext, recipe: Recipe, trained: TrainedStudent) -> StudentEval:
    """Score the trained student on dev against the labels and the teacher, save it with its records (``eval.json``
    last: it marks the student complete), then remove its training checkpoints."""
    spec, data, result, student_dir = context.spec, context.data, trained.result, context.student_dir
    logits = predict_logits(
        result.model, context.validation, context.tokenizer, recipe.eval_batch_size(spec), desc=spec.name
    )
    teacher_logits = np.load(context.teacher_dir / DEV_LOGITS_FILE)
    evaluation = StudentEval(
        name=spec.name,
        recipe=spec.recipe,
        objective=spec.objective,
        metrics=evaluate_logits(logits, np.asarray(data.validation["label"]), data.metrics),
        main_metric=data.main_metric,
        agreement_with_teacher=agreement(
            predictions_from_logits(logits), predictions_from_logits(teacher_logits), data.is_regression
        ),
        parameters=count_parameters(result.model),
        teacher_parameters=count_parameters(trained.teacher),
        best_checkpoint=result.best,
    )
    result.model.save_pretrained(student_dir)
    context.tokenizer.save_pretrained(student_dir)
    save_array(student_dir / DEV_LOGITS_FILE, logits)
    record = StudentRecord(
        recipe=spec.recipe,
        objective=spec.objective,
        student=spec.model_dump(mode="json"),
        teacher=str(context.teacher_dir),
        description=recipe.describe(spec, trained.facts),
        **trained.record,
        seed=context.config.seed,
        precision=result.precision,
        resumed_from=result.resumed_from,
        history=result.history,
    )
    record.save(student_dir / RECIPE_FILE)
    evaluation.save(student_dir / EVAL_FILE)
    for work_dir in recipe.work_dirs(student_dir):
        remove_checkpoints(work_dir)
    return evaluation


def select_best_seed(student_dir: Path, seeds: list[int], metric: str) -> StudentEval:
    """Copy the seed with the best dev ``metric`` (the first on ties) from ``student_dir/seeds/SEED`` into
    ``student_dir``; its ``eval.json`` gains ``selected_seed`` and every seed's metrics. Returns that record."""
    records = {seed: StudentEval.load(seed_dir(student_dir, seed) / EVAL_FILE) for seed in seeds}
    best = max(seeds, key=lambda seed: (records[seed].metrics[metric], -seeds.index(seed)))
    source = seed_dir(student_dir, best)
    for path in sorted(source.iterdir()):
        if path.is_file() and path.name != EVAL_FILE:
            copy_file(path, student_dir / path.name)
    record = records[best].model_copy(
        update={
            "selected_seed": best,
            "selection": f"best dev {metric} of seeds {seeds}",
            "seeds": {str(seed): records[seed].metrics for seed in seeds},
        }
    )
    record.save(student_dir / EVAL_FILE)
    return record
