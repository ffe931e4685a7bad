"""Exceptions that reach the user: each carries one sentence naming the problem and the fix."""


class DistillError(Exception):
    """Base class for every user-facing failure; the CLI prints it without a traceback."""


class ConfigError(DistillError):
    """The YAML config or a ``--set`` override is invalid."""


class DataError(DistillError):
    """A data file is missing, malformed, or lacks a configured column."""


class TeacherError(DistillError):
    """The teacher cannot be loaded, does not fit the task, or is no better than chance."""


class StudentError(DistillError):
    """A student specification does not fit its teacher (layer map out of range, and so on)."""


class ExportError(DistillError):
    """ONNX export failed or its outputs disagree with PyTorch beyond the tolerance."""


class StageError(DistillError):
    """A stage was asked to run before the stages it depends on have completed."""


class GateError(DistillError):
    """A configured CI gate (accuracy drop, speed-up, size) failed; every result was written first."""
