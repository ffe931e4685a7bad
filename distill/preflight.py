"""Every check that needs only the config, the data and the teacher's ``config.json``, run before any stage; and the
budgets chosen from the data (:func:`resolve_for_run`).

``distill validate`` and the start of every stage command report all of them at once, in the config-error format,
so that a layer map the teacher cannot serve or a sequence length past its position limit is found in seconds,
not when its stage starts hours into a run.
"""

from __future__ import annotations

from collections import Counter

from transformers import PretrainedConfig

from distill.config import Config
from distill.data import TaskData, load_task_data
from distill.errors import ConfigError, DataError, TeacherError

SHOWN_LABELS = 20
"""Classes listed by name in :func:`data_summary`; the rest are counted."""


def sequence_problems(config: Config, teacher: PretrainedConfig) -> list[str]:
    """Sequence lengths the teacher's position embeddings cannot reach (students share them)."""
    limit = getattr(teacher, "max_position_embeddings", None)
    if not limit:
        return []
    problems = []
    if config.data.max_length > limit:
        problems.append(
            f"data.max_length: {config.data.max_length} is past the teacher's {limit} positions; set it to {limit} "
            "or less"
        )
    if max(config.bench.seq_lengths) > limit:
        problems.append(
            f"bench.seq_lengths: {max(config.bench.seq_lengths)} is past the teacher's {limit} positions; "
            f"keep every length at {limit} or less"
        )
    longest_check = max((seq for _, seq in config.export.check_shapes), default=0)
    if longest_check > limit:
        problems.append(
            f"export.check_shapes: sequence {longest_check} is past the teacher's {limit} positions; "
            f"keep every length at {limit} or less"
        )
    return problems


def problems(config: Config, data: TaskData | None) -> list[str]:
    """Every problem found in ``config`` against its loaded ``data`` (None: data that could not be loaded, so the
    checks that need its labels are skipped) and the teacher's ``config.json``."""
    from distill.students import RECIPES
    from distill.teacher import head_problem, local_config

    teacher = local_config(config.teacher.source)  # a teacher that cannot be read stops the checks with its sentence
    if teacher is None:
        return []
    found = []
    if getattr(teacher, "pad_token_id", None) is None:
        found.append(
            f"teacher.source: the teacher ({teacher.model_type}) has no padding token, which batches of texts of "
            "different lengths need; distill distils BERT-family encoders: use one as teacher.source"
        )
    if config.teacher.finetune != "always" and data is not None:
        problem = head_problem(teacher, config.teacher.source, data)
        if problem:
            found.append(f"teacher.source: {problem}")
    found += sequence_problems(config, teacher)
    for index, student in enumerate(config.students):
        found += [f"students.{index} ({student.name}): {p}" for p in RECIPES[student.recipe].check(student, teacher)]
    return found


def _raise_all(found: list[str]) -> None:
    if len(found) == 1:
        raise ConfigError(found[0])
    if found:
        raise ConfigError(f"the config has {len(found)} problems:\n" + "\n".join(f"  - {p}" for p in found))


def preflight(config: Config, data: TaskData) -> None:
    """Raise one :class:`ConfigError` listing every problem :func:`problems` finds; nothing is written before."""
    _raise_all(problems(config, data))


def check_all(config: Config) -> TaskData:
    """Open the data (files, columns, labels) and run every check, for ``distill validate``.

    A data or teacher problem joins the list instead of hiding the others; alone, it is raised as it is (one
    sentence, its own type). Returns the loaded data, for :func:`data_summary`.
    """
    found: list[str] = []
    errors: list[DataError | TeacherError] = []
    data = None
    try:
        data = load_task_data(config.data, config.task, config.seed)
    except DataError as err:
        errors.append(err)
        found.append(f"data: {err}")
    try:
        found += problems(config, data)
    except TeacherError as err:  # a teacher that cannot be read stops the teacher checks with its sentence
        errors.append(err)
        found.append(str(err))
    if len(found) == 1 and errors:
        raise errors[0]
    _raise_all(found)
    assert data is not None, "a data problem is in found, so _raise_all raised"
    return data


def data_summary(data: TaskData) -> list[str]:
    """What ``distill validate`` found in the data: rows per split, task kind, metrics and the labels with counts."""
    texts = "text pairs" if data.has_pair else "single texts"
    if data.is_regression:
        kind = "regression"
        train, dev = (data.train["label"], data.validation["label"])
        labels = "labels: " + ", ".join(
            f"{split} {min(values):g} to {max(values):g} (mean {sum(values) / len(values):g})"
            for split, values in (("train", train), ("dev", dev))
        )
    else:
        assert data.label_names is not None, "classification has label names"
        kind = f"classification with {data.num_labels} classes"
        train_counts, dev_counts = Counter(data.train["label"]), Counter(data.validation["label"])
        shown = [
            f"{name} {train_counts[index]} / {dev_counts[index]}"
            for index, name in enumerate(data.label_names[:SHOWN_LABELS])
        ]
        more = len(data.label_names) - SHOWN_LABELS
        labels = "labels (train / dev rows): " + ", ".join(shown) + (f", and {more} more" if more > 0 else "")
    return [
        f"data: {len(data.train)} train rows, {len(data.validation)} dev rows; {texts}; {kind}; "
        f"metrics: {', '.join(data.metrics)}",
        labels,
    ]


def resolve_for_run(config: Config, data: TaskData) -> tuple[Config, list[str]]:
    """:func:`distill.budget.resolve` with the teacher's width read from its ``config.json`` (when it is on this
    machine), each choice printed once: the budgets every stage command trains with."""
    import click

    from distill import distributed
    from distill.budget import resolve
    from distill.teacher import local_config

    config, notes = resolve(config, data, local_config(config.teacher.source))
    for note in notes if distributed.is_main() else []:
        click.echo(f"budget: {note}")
    return config, notes
