"""Every check that needs only the config, the data and the teacher's ``config.json``, run before any stage.

``distill validate`` and the start of every stage command report all of them at once, in the config-error format,
so that a layer map the teacher cannot serve or a sequence length past its position limit is found in seconds,
not when its stage starts hours into a run.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from distill.config import Config
from distill.data import TaskData
from distill.errors import ConfigError


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


def problems(config: Config, data: TaskData) -> list[str]:
    """Every problem found in ``config`` against its loaded ``data`` and the teacher's ``config.json``."""
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
    if config.teacher.finetune != "always":
        problem = head_problem(teacher, config.teacher.source, data)
        if problem:
            found.append(f"teacher.source: {problem}")
    found += sequence_problems(config, teacher)
    for index, student in enumerate(config.students):
        found += [f"students.{index} ({student.name}): {p}" for p in RECIPES[student.recipe].check(student, teacher)]
    return found


def preflight(config: Config, data: TaskData) -> None:
    """Raise one :class:`ConfigError` listing every problem :func:`problems` finds; nothing is written before."""
    found = problems(config, data)
    if len(found) == 1:
        raise ConfigError(found[0])
    if found:
        raise ConfigError(f"the config has {len(found)} problems:\n" + "\n".join(f"  - {p}" for p in found))
