"""The student recipes by name: the one place that knows every recipe."""

from __future__ import annotations

from typing import Any

from distill.data import TaskData
from distill.students.base import Recipe, StudentSpec
from distill.students.distilbert import DistilBertRecipe
from distill.students.tinybert import TinyBertRecipe

RECIPES: dict[str, Recipe[Any]] = {"distilbert": DistilBertRecipe(), "tinybert": TinyBertRecipe()}
"""Every recipe under the name a student's ``recipe`` key gives."""


def recipe_for(spec: StudentSpec) -> Recipe[Any]:
    """The recipe that trains ``spec``."""
    return RECIPES[spec.recipe]


def plan(spec: StudentSpec, data: TaskData) -> str:
    """What training ``spec`` is about to do, in one line (the stage's start message)."""
    return recipe_for(spec).plan(spec, data)
