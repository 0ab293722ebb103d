"""The pruning hook: masks gradients and weights, counts flips, and prunes on schedule.

Order within a step (as in the FlipOut reference code): noise is added to the gradients, pruned gradients are zeroed,
the optimizer steps, pruned weights are zeroed again (momentum or Adam state could otherwise move them), flips are
counted against the signs before the step, and at a scheduled step the lowest-scoring weights are pruned globally.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..hooks import ParamView
from .flips import FlipCounter
from .masks import MaskSet
from .noise import GradientNoise
from .schedule import GeometricSchedule, PruneEvent
from .scores import Score, ScoreContext
from .selection import prune_global


@dataclass
class PruneLog:
    step: int
    sparsity: float


@dataclass
class PruningResult:
    masks: dict[str, np.ndarray]
    flips: dict[str, np.ndarray] | None
    events: list[PruneLog] = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        total = sum(m.size for m in self.masks.values())
        return float(sum((~m).sum() for m in self.masks.values()) / max(total, 1))


class Pruner:
    """A TrainingHook that prunes `names` to the schedule's target by `score`."""

    def __init__(self, names: list[str], score: Score, schedule: GeometricSchedule, noise: float = 0.0, seed: int = 0):
        self.names, self.score, self.schedule = list(names), score, schedule
        self.noise_scale, self.seed = noise, seed
        self.masks: MaskSet | None = None
        self.flips: FlipCounter | None = None
        self.noise: GradientNoise | None = None
        self._events: dict[int, PruneEvent] = {}
        self.log: list[PruneLog] = []

    def on_start(self, params: dict[str, ParamView], total_steps: int) -> None:
        weights = self._weights(params)
        self.masks = MaskSet({n: w.shape for n, w in weights.items()})
        if self.score.needs_flips:
            self.flips = FlipCounter(weights)
        if self.noise_scale > 0:
            self.noise = GradientNoise(self.noise_scale, [w.size for w in weights.values()], self.seed)
        events = self.schedule.events(total_steps, self.masks.total)
        self._events = {e.step: e for e in events}

    def before_step(self, step: int, params: dict[str, ParamView]) -> None:
        grads = {n: params[n].grad for n in self.names}
        if self.noise is not None:
            for g in grads.values():
                self.noise.add(g)
        self.masks.zero(grads)

    def after_step(self, step: int, params: dict[str, ParamView]) -> None:
        weights = self._weights(params)
        self.masks.zero(weights)
        if self.flips is not None:
            self.flips.update(weights)
        event = self._events.get(step)
        if event is not None:
            self.prune_to(event.n_pruned_after, weights)
            self.log.append(PruneLog(step, self.masks.sparsity))

    def prune_to(self, n_pruned_after: int, weights: dict[str, np.ndarray]) -> None:
        """Prune globally until exactly `n_pruned_after` weights are pruned."""
        ctx = ScoreContext(weights, self.flips.counts if self.flips else None)
        chosen = prune_global(self.score(ctx), self.masks, n_pruned_after - self.masks.n_pruned)
        for name, idx in chosen.items():
            if idx.size:
                self.masks.prune(name, idx)
        self.masks.zero(weights)
        if self.flips is not None:
            for name, w in weights.items():
                self.flips.resync(name, w)

    def status(self) -> dict[str, str]:
        return {"sparsity": f"{self.masks.sparsity:.3f}"} if self.masks else {}

    def result(self) -> PruningResult:
        flips = {n: c.copy() for n, c in self.flips.counts.items()} if self.flips else None
        return PruningResult(self.masks.state(), flips, list(self.log))

    def _weights(self, params: dict[str, ParamView]) -> dict[str, np.ndarray]:
        return {n: params[n].data for n in self.names}
