"""Unit tests for teacher-to-student layer maps."""

from __future__ import annotations

import itertools

import pytest

from distill.errors import DistillError, StudentError
from distill.mapping import hidden_state_pairs, select_layers, uniform_layers


@pytest.mark.parametrize(
    "teacher_layers, student_layers, expected",
    [
        (6, 3, [1, 3, 5]),
        (6, 4, [0, 2, 3, 5]),
        (12, 4, [2, 5, 8, 11]),
        (12, 5, [1, 3, 6, 8, 11]),
        (12, 6, [1, 3, 5, 7, 9, 11]),
        (6, 6, [0, 1, 2, 3, 4, 5]),
        (6, 1, [5]),
        (4, 2, [1, 3]),
    ],
)
def test_uniform_layers(teacher_layers, student_layers, expected):
    assert uniform_layers(teacher_layers, student_layers) == expected
    assert select_layers("uniform", teacher_layers, student_layers) == expected


@pytest.mark.parametrize("teacher_layers", range(1, 13))
def test_uniform_is_strictly_increasing_and_ends_at_the_top(teacher_layers):
    for student_layers in range(1, teacher_layers + 1):
        layers = uniform_layers(teacher_layers, student_layers)
        assert len(layers) == student_layers
        assert all(a < b for a, b in itertools.pairwise(layers)), layers
        assert layers[-1] == teacher_layers - 1 and layers[0] >= 0


def test_first_and_last():
    assert select_layers("first", 6, 3) == [0, 1, 2]
    assert select_layers("last", 6, 3) == [3, 4, 5]
    assert select_layers("last", 12, 4) == [8, 9, 10, 11]
    assert select_layers("first", 4, 4) == [0, 1, 2, 3]


def test_explicit_list_is_kept_in_order():
    assert select_layers([0, 5, 2], 6, 3) == [0, 5, 2]
    assert select_layers((1, 3), 4, 2) == [1, 3]


def test_student_deeper_than_teacher():
    with pytest.raises(
        StudentError, match=r"4 layers cannot be initialised from a teacher with 3; set num_layers to at most 3"
    ):
        select_layers("uniform", 3, 4)
    with pytest.raises(StudentError, match="at most 3"):
        select_layers([0, 1, 2, 3], 3, 4)


@pytest.mark.parametrize("layers, bad", [([0, 6, 2], "[6]"), ([-1, 2, 3], "[-1]"), ([7, 8, 1], "[7, 8]")])
def test_out_of_range_layers(layers, bad):
    with pytest.raises(StudentError) as info:
        select_layers(layers, 6, 3)
    assert f"names teacher layers {bad}" in str(info.value)
    assert "0..5" in str(info.value)


def test_repeated_layer():
    with pytest.raises(StudentError, match=r"\[1, 1, 3\] repeats a teacher layer"):
        select_layers([1, 1, 3], 6, 3)


def test_wrong_length():
    with pytest.raises(StudentError, match="lists 2 layers for a 3-layer student"):
        select_layers([1, 3], 6, 3)


def test_unknown_strategy():
    with pytest.raises(StudentError, match=r"unknown layer selection 'middle'"):
        select_layers("middle", 6, 3)
    assert issubclass(StudentError, DistillError)


def test_hidden_state_pairs_shift_by_the_embedding_output():
    assert hidden_state_pairs([1, 3, 5]) == [(0, 0), (1, 2), (2, 4), (3, 6)]
    assert hidden_state_pairs([0]) == [(0, 0), (1, 1)]
    assert hidden_state_pairs([]) == [(0, 0)]
