"""Typed errors. Each class has its own CLI exit code; messages name the file, tensor or option and the remedy.

Subclasses keep their parent's meaning (an UnsafeModelError is a ModelError, so `except ModelError` still catches it)
but get a code of their own, so scripts can tell "broken model" from "hostile model" from "too big for this machine".
"""

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


class UnsafeModelError(ModelError):
    """The model points outside its own folder: external data via `..`, an absolute path, a symlink or hardlink,
    a device/FIFO, or onnxruntime's in-memory address markers. Refused before anything is read from there."""

    exit_code = 7


class ModelTooLargeError(ModelError):
    """The model declares more tensor bytes than the memory budget (`max_bytes`) or than protobuf can hold."""

    exit_code = 8


class CheckpointError(TrainingError):
    """A fine-tuning checkpoint cannot be used: missing, truncated or corrupt files, another format version, or saved
    for another model, data or configuration. Nothing is trained and the input is untouched."""

    exit_code = 9
