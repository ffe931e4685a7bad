"""What a stage's fingerprint hashes: the config values that differ from the defaults of fingerprint rule 2.

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

from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic_core import PydanticUndefined

from distill.config import (
    AugmentationConfig,
    DistilBertStudentConfig,
    IntermediateStageConfig,
    PredictionStageConfig,
    TeacherConfig,
    TinyBertStudentConfig,
    TrainingConfig,
)

_RULE2_AUGMENTATION = {"enabled": False, "copies": 20}

RULE2_DEFAULTS: dict[tuple[type[BaseModel], str], Any] = {
    (TrainingConfig, "epochs"): 3.0,
    (TrainingConfig, "learning_rate"): 5e-5,
    (AugmentationConfig, "enabled"): False,
    (AugmentationConfig, "copies"): 20,
    (TeacherConfig, "training"): {"epochs": 2.0, "learning_rate": 5e-5},
    (DistilBertStudentConfig, "training"): {"epochs": 3.0, "learning_rate": 1e-4},
    (DistilBertStudentConfig, "augmentation"): _RULE2_AUGMENTATION,
    (TinyBertStudentConfig, "augmentation"): _RULE2_AUGMENTATION,
    (IntermediateStageConfig, "training"): {"epochs": 2.0, "learning_rate": 5e-5},
    (PredictionStageConfig, "training"): {"epochs": 3.0, "learning_rate": 5e-5},
    (TinyBertStudentConfig, "intermediate"): {"training": {"epochs": 2.0, "learning_rate": 5e-5}},
    (TinyBertStudentConfig, "prediction"): {"training": {"epochs": 3.0, "learning_rate": 5e-5}},
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
