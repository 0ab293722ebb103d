"""Importance scores: higher = more important. Selection prunes the lowest.

A score only says how important each weight is; which weights to remove (selection.py) and when (schedule.py)
are separate ideas, so a new criterion is one small class.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np


@dataclass
class ScoreContext:
    """What a score may look at: current weights and the flip counts gathered since fine-tuning began."""

    weights: dict[str, np.ndarray]
    flips: dict[str, np.ndarray] | None = None


class Score(abc.ABC):
    name: str = ""
    needs_flips: bool = False

    @abc.abstractmethod
    def __call__(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        """One float64 array per tensor, the shape of the weight."""


class FlipOutScore(Score):
    """FlipOut saliency |w|^p / (flips + 1) (Apostol et al. 2020, p = 2 in the paper's main results)."""

    name = "flipout"
    needs_flips = True

    def __init__(self, p: float = 2.0):
        if p <= 0:
            raise ValueError(f"FlipOut exponent p must be > 0, got {p}")
        self.p = p

    def __call__(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        if ctx.flips is None:
            raise ValueError("FlipOut needs flip counts")
        return {n: np.abs(w, dtype=np.float64) ** self.p / (ctx.flips[n] + 1.0) for n, w in ctx.weights.items()}


class MagnitudeScore(Score):
    """|w|: the classic magnitude criterion."""

    name = "magnitude"

    def __call__(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        return {n: np.abs(w, dtype=np.float64) for n, w in ctx.weights.items()}
