"""Importance scores: higher = more important. Selection prunes the lowest.

A score only says how important each weight is; which weights to remove (selection.py) and when (schedule.py)
are separate ideas, so a new criterion is one small class. A score names what it needs beyond the weights in
`needs`; the pruner gathers exactly that (flip counts itself, gradients and layer inputs from the runtime).

References:
- FlipOut: Apostol, Stoica, Vasile, Popescu, "FlipOut: Uncovering Redundant Weights via Sign Flipping" (2020),
  saliency |w|^p / (flips + 1).
- SNIP: Lee, Ajanthan, Torr, "SNIP: Single-shot Network Pruning based on Connection Sensitivity" (ICLR 2019),
  connection sensitivity |dL/dc_j| = |g_j * w_j| for a mask c = 1, from gradients on a few batches.
- NNrelief: see nnrelief.py.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

FLIPS, GRADIENTS, LAYER_INPUTS = "flips", "gradients", "layer_inputs"


@dataclass
class ScoreContext:
    """What a score may look at: current weights, plus whatever its `needs` asked for.

    flips: sign flips per weight since fine-tuning began; gradients: mean loss gradient per weight over a few
    batches, without optimizer steps; layer_inputs: per prunable tensor, nnrelief.NeuronInputs."""

    weights: dict[str, np.ndarray]
    flips: dict[str, np.ndarray] | None = None
    gradients: dict[str, np.ndarray] | None = None
    layer_inputs: dict | None = None


class Score(abc.ABC):
    name: str = ""
    needs: frozenset[str] = frozenset()

    @property
    def needs_flips(self) -> bool:
        return FLIPS in self.needs

    @abc.abstractmethod
    def __call__(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        """One float64 array per tensor, the shape of the weight."""


def _required(ctx: ScoreContext, what: str, by: str):
    value = getattr(ctx, what)
    if value is None:
        raise ValueError(f"{by} needs {what.replace('_', ' ')}")
    return value


class FlipOutScore(Score):
    """FlipOut saliency |w|^p / (flips + 1) (Apostol et al. 2020, p = 2 in the paper's main results)."""

    name = "flipout"
    needs = frozenset({FLIPS})

    def __init__(self, p: float = 2.0):
        if p <= 0:
            raise ValueError(f"FlipOut exponent p must be > 0, got {p}")
        self.p = p

    def __call__(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        flips = _required(ctx, "flips", "FlipOut")
        return {n: np.abs(w, dtype=np.float64) ** self.p / (flips[n] + 1.0) for n, w in ctx.weights.items()}


class MagnitudeScore(Score):
    """|w|: the classic magnitude criterion."""

    name = "magnitude"

    def __call__(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        return {n: np.abs(w, dtype=np.float64) for n, w in ctx.weights.items()}


class RandomScore(Score):
    """Uniform random scores, fresh at every event, from one seeded generator: the baseline any criterion must beat.

    Pruned weights are never candidates again, so random scores prune uniformly among the alive weights."""

    name = "random"

    def __init__(self, seed: int = 0):
        self._rng = np.random.default_rng(seed)

    def __call__(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        return {n: self._rng.random(w.shape) for n, w in ctx.weights.items()}


class SnipScore(Score):
    """SNIP connection sensitivity |g * w| (Lee et al. 2019), g = mean loss gradient over a few batches.

    Its paper normalises by the sum over all weights; a global constant changes no ranking, so it is left out."""

    name = "snip"
    needs = frozenset({GRADIENTS})

    def __call__(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        grads = _required(ctx, "gradients", "SNIP")
        return {n: np.abs(grads[n].astype(np.float64) * w) for n, w in ctx.weights.items()}
