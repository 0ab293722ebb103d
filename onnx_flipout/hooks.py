"""The contract between the fine-tuning loop and everything that watches or edits it.

The trainer (onnx_flipout.runtime.trainer) knows nothing about pruning: it runs steps and calls hooks with zero-copy
views of the live parameters. Flip counting, masking, noise and pruning are hooks: numpy, with their per-step
loops compiled by numba (onnx_flipout/kernels.py).
Hooks that hold state implement StatefulHook's optional state_dict/load_state_dict, so a run can resume.
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


class StatefulHook(TrainingHook, Protocol):
    """A hook whose state must survive an interruption (runtime/checkpoint.py). Both methods are optional: a hook
    without them is taken to be stateless and simply gets on_start again when a run resumes.

    State is a nested dict/list of numpy arrays, numbers, strings, booleans and None (JSON plus arrays), so a
    checkpoint never needs pickle. On resume the trainer calls load_state_dict *before* on_start: on_start then
    continues from that state instead of starting fresh (no event already applied is applied again)."""

    def state_dict(self) -> dict:
        """Everything needed to continue bit for bit after the last completed step (copies, not live views)."""

    def load_state_dict(self, state: dict) -> None:
        """Take `state` from state_dict(); raise ValueError naming what does not fit."""
