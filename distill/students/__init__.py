"""Students: one :class:`~distill.students.base.Recipe` per family, found by name in :data:`RECIPES`.

| module | job |
|---|---|
| :mod:`~distill.students.base` | the recipe interface and the values passed to and from it |
| :mod:`~distill.students.registry` | ``RECIPES``, ``recipe_for``, ``plan`` |
| :mod:`~distill.students.distilbert` | DistilBERT-style: teacher width, layers copied from the teacher |
| :mod:`~distill.students.tinybert` | TinyBERT-style: narrower, two stages |
| :mod:`~distill.students.attention` | score attention and the projected student of TinyBERT's stage 1 |
| :mod:`~distill.students.truncate` | weight surgery: layer copies and truncation of the teacher |
| :mod:`~distill.students.init` | where a student's weights come from (``init_from``) |
| :mod:`~distill.students.stage` | train, evaluate and save any student; best-seed selection |

A third recipe is one new module with a :class:`~distill.students.base.Recipe` subclass, added to ``RECIPES``.
"""

from distill.objective import logits_only
from distill.students.attention import SCORES_ATTENTION, ProjectedStudent
from distill.students.base import Recipe, StudentContext, StudentSpec, TrainedStudent, TrainingFacts
from distill.students.init import initialisation_source
from distill.students.registry import RECIPES, plan, recipe_for
from distill.students.stage import count_parameters, run_student_stage, select_best_seed
from distill.students.tinybert import build_tinybert_student, total_epochs, train_tinybert
from distill.students.truncate import LAYER_KEY, build_distilbert_student, student_config_for, truncate_teacher

__all__ = [
    "LAYER_KEY",
    "RECIPES",
    "SCORES_ATTENTION",
    "ProjectedStudent",
    "Recipe",
    "StudentContext",
    "StudentSpec",
    "TrainedStudent",
    "TrainingFacts",
    "build_distilbert_student",
    "build_tinybert_student",
    "count_parameters",
    "initialisation_source",
    "logits_only",
    "plan",
    "recipe_for",
    "run_student_stage",
    "select_best_seed",
    "student_config_for",
    "total_epochs",
    "train_tinybert",
    "truncate_teacher",
]
