"""The pruning hook: masks gradients and weights, counts flips, and prunes on schedule.

Order within a step (as in the FlipOut reference code): noise is added to the gradients, pruned gradients are zeroed,
the optimizer steps, pruned weights are zeroed again (momentum or Adam state could otherwise move them), flips are
counted against the signs before the step, and at a scheduled step the selection prunes the lowest-scoring weights.
An event at step 0 (one-shot criteria such as SNIP) is applied in on_start, before the first step.

Resuming (hooks.StatefulHook): state_dict() holds masks, flip buffers, the noise and score generators, the prune log
and the last step seen; load_state_dict() before on_start makes on_start continue from it, so an event that already
fired never fires again and the schedule is checked to be the one the state was saved under.

Scores that need more than weights and flips (gradients, layer inputs) get them from `Probes`: callables the runtime
supplies, so this module stays numpy (and numba kernels) and never imports onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..hooks import ParamView
from .flips import FlipCounter
from .masks import MaskSet
from .noise import GradientNoise
from .schedule import PruneEvent, Schedule
from .scores import GRADIENTS, LAYER_INPUTS, Score, ScoreContext
from .selection import GlobalSelection, Selection


@dataclass
class Probes:
    """Measurements only the runtime can make, taken on the current weights when an event needs them."""

    gradients: Callable[[], dict[str, np.ndarray]] | None = None  # mean loss gradient per prunable tensor
    layer_inputs: Callable[[], dict] | None = None  # nnrelief.NeuronInputs per prunable tensor


@dataclass
class PruneLog:
    step: int
    sparsity: float
    threshold: float | None = None  # highest score pruned at this event (NNrelief: minus the event's alpha)


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
    """A TrainingHook that prunes `names` on `schedule`, choosing weights by `score` and `selection`."""

    def __init__(self, names: list[str], score: Score, schedule: Schedule, selection: Selection | None = None,
                 noise: float = 0.0, seed: int = 0, probes: Probes | None = None):
        self.names, self.score, self.schedule = list(names), score, schedule
        self.selection = selection if selection is not None else GlobalSelection()
        self.probes = probes if probes is not None else Probes()
        for need in (GRADIENTS, LAYER_INPUTS):
            if need in score.needs and getattr(self.probes, need) is None:
                raise ValueError(f"the {score.name or type(score).__name__} score needs a {need} probe")
        self.noise_scale, self.seed = noise, seed
        self.masks: MaskSet | None = None
        self.flips: FlipCounter | None = None
        self.noise: GradientNoise | None = None
        self._events: dict[int, PruneEvent] = {}
        self._schedule: list[PruneEvent] = []
        self._step = 0  # the last step seen: events up to it have fired
        self._restored: dict | None = None
        self.log: list[PruneLog] = []

    def on_start(self, params: dict[str, ParamView], total_steps: int) -> None:
        weights = self._weights(params)
        self.masks = MaskSet({n: w.shape for n, w in weights.items()})
        if self.score.needs_flips:
            self.flips = FlipCounter(weights)
        if self.noise_scale > 0:
            self.noise = GradientNoise(self.noise_scale, [w.size for w in weights.values()], self.seed)
        self._schedule = self.schedule.events(total_steps, self.masks.total)
        self._events = {e.step: e for e in self._schedule}
        if self._restored is not None:
            state, self._restored = self._restored, None
            self._restore(state)
        elif 0 in self._events:
            self._apply(self._events.pop(0), weights)

    def before_step(self, step: int, params: dict[str, ParamView]) -> None:
        grads = {n: params[n].grad for n in self.names}
        if self.noise is not None:
            for g in grads.values():
                self.noise.add(g)
        self.masks.zero(grads)

    def after_step(self, step: int, params: dict[str, ParamView]) -> None:
        weights = self._weights(params)
        if self.flips is not None:
            self.flips.update(weights, keep=self.masks.zeroing_masks())  # zeroes pruned weights, then counts
        else:
            self.masks.zero(weights)
        self._step = step
        event = self._events.get(step)
        if event is not None:
            self._apply(event, weights)

    def _apply(self, event: PruneEvent, weights: dict[str, np.ndarray]) -> None:
        threshold = self.prune_to(event.n_pruned_after, weights)
        self.log.append(PruneLog(event.step, self.masks.sparsity, threshold))

    def prune_to(self, n_pruned_after: int | None, weights: dict[str, np.ndarray]) -> float | None:
        """Prune until exactly `n_pruned_after` weights are pruned (None: as many as the selection decides).

        Returns the highest score pruned, or None when nothing was."""
        scores = self.score(self._context(weights))
        chosen = self.selection(scores, self.masks, n_pruned_after)
        threshold = None
        for name, idx in chosen.items():
            if idx.size:
                self.masks.prune(name, idx)
                top = float(scores[name].reshape(-1)[idx].max())
                threshold = top if threshold is None else max(threshold, top)
        self.masks.zero(weights)
        if self.flips is not None:
            for name, w in weights.items():
                self.flips.resync(name, w)
        return threshold

    def _context(self, weights: dict[str, np.ndarray]) -> ScoreContext:
        needs = self.score.needs
        return ScoreContext(
            weights,
            flips=self.flips.counts if self.flips else None,
            gradients=self.probes.gradients() if GRADIENTS in needs else None,
            layer_inputs=self.probes.layer_inputs() if LAYER_INPUTS in needs else None,
        )

    def status(self) -> dict[str, str]:
        return {"sparsity": f"{self.masks.sparsity:.3f}"} if self.masks else {}

    def state_dict(self) -> dict:
        return {
            "names": list(self.names), "step": self._step,
            "schedule": [[e.step, e.n_pruned_after] for e in self._schedule],
            "masks": self.masks.state(),
            "flips": self.flips.state_dict() if self.flips else None,
            "noise": self.noise.state_dict() if self.noise else None,
            "generators": {k: g.bit_generator.state for k, g in self._generators().items()},
            "log": [vars(e).copy() for e in self.log],
        }

    def load_state_dict(self, state: dict) -> None:
        """Kept until on_start, which knows the tensors and the schedule to check the state against."""
        self._restored = state

    def _restore(self, state: dict) -> None:
        if state["names"] != self.names:
            raise ValueError(f"saved pruning state is for tensors {state['names']}, not {self.names}")
        if state["schedule"] != [[e.step, e.n_pruned_after] for e in self._schedule]:
            raise ValueError("saved pruning state was made under another prune schedule")
        self.masks.load_state(state["masks"])
        for part in ("flips", "noise"):
            mine = getattr(self, part)
            if (mine is None) != (state[part] is None):
                raise ValueError(f"saved pruning state and this run disagree on whether {part} are used")
            if mine is not None:
                mine.load_state_dict(state[part])
        generators = self._generators()
        if set(generators) != set(state["generators"]):
            raise ValueError(f"saved random generators {sorted(state['generators'])}, not {sorted(generators)}")
        for key, g in generators.items():
            g.bit_generator.state = state["generators"][key]
        self.log = [PruneLog(**e) for e in state["log"]]
        self._step = int(state["step"])
        self._events = {k: e for k, e in self._events.items() if k > self._step}

    def _generators(self) -> dict[str, np.random.Generator]:
        """numpy generators the score or selection keep between events (RandomScore draws fresh scores each
        event): their position is state too, found generically so a new criterion needs no resume code."""
        return {f"{role}.{attr}": v for role, obj in (("score", self.score), ("selection", self.selection))
                for attr, v in vars(obj).items() if isinstance(v, np.random.Generator)}

    def result(self) -> PruningResult:
        flips = {n: c.copy() for n, c in self.flips.counts.items()} if self.flips else None
        return PruningResult(self.masks.state(), flips, list(self.log))

    def _weights(self, params: dict[str, ParamView]) -> dict[str, np.ndarray]:
        return {n: params[n].data for n in self.names}
