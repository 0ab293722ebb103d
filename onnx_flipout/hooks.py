"""The contract between the fine-tuning loop and everything that watches or edits it.

The trainer (onnx_flipout.runtime.trainer) knows nothing about pruning: it runs steps and calls hooks with zero-copy
views of the live parameters. Flip counting, masking, noise and pruning are hooks, written in plain numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class ParamView:
    """Live views of one trainable tensor: editing them in place edits what onnxruntime trains."""

    data: np.ndarray
    grad: np.ndarray


class TrainingHook(Protocol):
    def on_start(self, params: dict[str, ParamView], total_steps: int) -> None:
        """Called once before the first step."""

    def before_step(self, step: int, params: dict[str, ParamView]) -> None:
        """Gradients of step `step` (1-based) are computed; the optimizer has not run yet."""

    def after_step(self, step: int, params: dict[str, ParamView]) -> None:
        """The optimizer has updated the weights of step `step`."""

    def status(self) -> dict[str, str]:
        """Short fields for the progress bar."""
