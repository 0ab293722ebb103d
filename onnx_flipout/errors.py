"""Typed errors. Each class has its own CLI exit code; messages name the file, tensor or option and the remedy."""

from __future__ import annotations


class FlipoutError(Exception):
    """Base class of every error onnx-flipout raises on purpose."""

    exit_code = 1


class ConfigError(FlipoutError, ValueError):
    """An option is out of range or inconsistent (e.g. --sparsity 1.5)."""

    exit_code = 2


class ModelError(FlipoutError):
    """The model file cannot be read, is not ONNX, or is outside what we support."""

    exit_code = 3


class DataError(FlipoutError):
    """Training/evaluation data does not match the model (missing input, wrong shape, empty...)."""

    exit_code = 4


class TrainingError(FlipoutError):
    """Fine-tuning failed (artifact generation, a training step, non-finite loss)."""

    exit_code = 5


class OutputError(FlipoutError):
    """The output cannot be written where asked (would overwrite the input, no space, ...)."""

    exit_code = 6
