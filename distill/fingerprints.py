"""Stage fingerprints: what each stage's hashes (the config values that differ from the defaults of rule 2), the
per-stage keys, and the migration of manifests written under rule 1.

Rule 2 hashes the values of a config section that differ from the schema's defaults (as pydantic's
``exclude_defaults`` dumps them), so that a release adding a field with a default recomputes nothing. When a
release *changes* a default, a config that relied on the old default now means something else, and one that states
the old value explicitly means the same thing as before; both must be judged against the defaults rule 2 was defined
with. :data:`RULE2_DEFAULTS` freezes the defaults that have changed since, and :func:`settings` compares against
them, so:

- a config that states the old value (such as every run's own ``config.yaml``) keeps its fingerprint;
- a config that left the value to the new default gets a new fingerprint where the new default changes the result
  (``epochs`` unset is now chosen by :mod:`distill.budget`, which fingerprints the chosen value).

Fingerprints are taken of *resolved* configs (after :func:`distill.budget.resolve`), so a budget distill chose
and the same budget written out by hand have the same fingerprint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter
from pydantic_core import PydanticUndefined

from distill.config import (
    AugmentationConfig,
    Config,
    DistilBertStudentConfig,
    ExportConfig,
    IntermediateStageConfig,
    PredictionStageConfig,
    TeacherConfig,
    TinyBertStudentConfig,
    TrainingConfig,
    config_from_dict,
)
from distill.errors import ConfigError
from distill.files import fingerprint
from distill.layout import TWIN_SUFFIX, RunLayout

_RULE2_AUGMENTATION = {"enabled": False, "copies": 20}

RULE2_DEFAULTS: dict[tuple[type[BaseModel], str], Any] = {
    (TrainingConfig, "epochs"): 3.0,
    (TrainingConfig, "learning_rate"): 5e-5,
    (AugmentationConfig, "enabled"): False,
    (AugmentationConfig, "copies"): 20,
    (TeacherConfig, "training"): {"epochs": 2.0, "learning_rate": 5e-5},
    (DistilBertStudentConfig, "training"): {"epochs": 3.0, "learning_rate": 1e-4},
    (DistilBertStudentConfig, "augmentation"): _RULE2_AUGMENTATION,
    (DistilBertStudentConfig, "alpha_cos"): 1.0,
    (TinyBertStudentConfig, "augmentation"): _RULE2_AUGMENTATION,
    (IntermediateStageConfig, "training"): {"epochs": 2.0, "learning_rate": 5e-5},
    (PredictionStageConfig, "training"): {"epochs": 3.0, "learning_rate": 5e-5},
    (TinyBertStudentConfig, "intermediate"): {"training": {"epochs": 2.0, "learning_rate": 5e-5}},
    (TinyBertStudentConfig, "prediction"): {"training": {"epochs": 3.0, "learning_rate": 5e-5}},
    (ExportConfig, "selection_iterations"): 20,
}
"""Defaults that changed after rule 2 was defined, as ``(class, field) -> value`` (for a nested section: the fields
of its default that changed). Values here are what rule 2's schema had."""

_ANY = TypeAdapter(Any)


def _json(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_json(item) for item in value]
    return _ANY.dump_python(value, mode="json")


def _overlay(base: Any, changes: dict[str, Any]) -> Any:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _overlay(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _default(cls: type[BaseModel], name: str) -> Any:
    """Field ``name``'s default under rule 2, as JSON (PydanticUndefined for a required field)."""
    default = cls.model_fields[name].get_default(call_default_factory=True)
    if default is PydanticUndefined:
        return default
    frozen = RULE2_DEFAULTS.get((cls, name), PydanticUndefined)
    current = _json(default)
    if frozen is PydanticUndefined:
        return current
    return _overlay(current, frozen) if isinstance(frozen, dict) and isinstance(current, dict) else frozen


def _dump(model: BaseModel, exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """``model.model_dump(mode="json", exclude_defaults=True)`` against the defaults of rule 2."""
    out: dict[str, Any] = {}
    for name in type(model).model_fields:
        if name in exclude:
            continue
        value = getattr(model, name)
        encoded = _json(value)
        default = _default(type(model), name)
        if default is not PydanticUndefined and encoded == default:
            continue
        if isinstance(value, BaseModel):
            out[name] = _dump(value)
        elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
            out[name] = [_dump(item) for item in value]
        else:
            out[name] = encoded
    return out


def settings(section: BaseModel, exclude: set[str] | None = None) -> dict[str, Any]:
    """The values of a config section that differ from rule 2's defaults: what a fingerprint hashes. Values that
    judge a stage's result rather than shape it (``teacher.min_margin``, ``bench.gates``) are excluded by the
    caller, as is a student's ``twin_training`` (it shapes the twin, whose own section holds it as ``training``)."""
    return _dump(section, frozenset(exclude or ()))


RULE = 2
"""The fingerprint rule's version. Rule 1 (distill up to c139548) hashed whole config sections, defaults included;
rule 2 hashes the values that differ from the defaults, with this version."""


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
        [(student.name, settings(student, exclude={"twin_training"})) for student in config.trained_students()],
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
