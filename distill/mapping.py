"""Layer maps between teacher and student, built by a named strategy or given explicitly, validated up front."""

from __future__ import annotations

from collections.abc import Sequence

from distill.errors import StudentError


def uniform_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layer (0-based) whose output student layer ``k`` imitates: ``(k + 1) * L // N - 1``.

    Works for any ratio, dividing or not (6 -> 3 gives [1, 3, 5]; 6 -> 4 gives [0, 2, 3, 5]); the top layer is
    always included, so the student's last layer faces the teacher's last.
    """
    return [(k + 1) * teacher_layers // student_layers - 1 for k in range(student_layers)]


def select_layers(strategy: str | Sequence[int], teacher_layers: int, student_layers: int) -> list[int]:
    """The teacher layers a student of ``student_layers`` layers is initialised from and mapped to.

    Args:
        strategy: ``"uniform"``, ``"first"``, ``"last"``, or an explicit list of 0-based teacher layers.
        teacher_layers: the teacher's depth ``L``.
        student_layers: the student's depth ``N``.
    Raises:
        StudentError: when the student is deeper than the teacher or an explicit layer is out of range.
    """
    if student_layers > teacher_layers:
        raise StudentError(
            f"a student with {student_layers} layers cannot be initialised from a teacher with {teacher_layers}; "
            f"set num_layers to at most {teacher_layers}"
        )
    if isinstance(strategy, str):
        layers = {
            "uniform": lambda: uniform_layers(teacher_layers, student_layers),
            "first": lambda: list(range(student_layers)),
            "last": lambda: list(range(teacher_layers - student_layers, teacher_layers)),
        }.get(strategy)
        if layers is None:
            raise StudentError(f"unknown layer selection {strategy!r}; use uniform, first, last or a list of layers")
        return layers()
    layers = list(strategy)
    bad = [layer for layer in layers if not 0 <= layer < teacher_layers]
    if bad:
        raise StudentError(
            f"layer_selection {layers} names teacher layers {bad} but the teacher has layers 0..{teacher_layers - 1}; "
            "pick layers in that range"
        )
    if len(layers) != student_layers:
        raise StudentError(f"layer_selection lists {len(layers)} layers for a {student_layers}-layer student")
    if len(set(layers)) != len(layers):
        raise StudentError(f"layer_selection {layers} repeats a teacher layer")
    return layers


def hidden_state_pairs(layer_map: Sequence[int]) -> list[tuple[int, int]]:
    """(student, teacher) indices into ``output.hidden_states`` (index 0 is the embedding output)."""
    return [(0, 0)] + [(student + 1, teacher + 1) for student, teacher in enumerate(layer_map)]
