"""When to prune and how much. Each schedule turns the step budget into PruneEvents with exact cumulative counts.

- GeometricSchedule: FlipOut's periodic schedule. The reference code prunes a fixed fraction r (0.5) of the remaining
  weights every few epochs. Here the user gives the final sparsity s instead; the number of events is
  k = ceil(log(1 - s) / log(1 - r)) and the last event uses a partial rate, so the cumulative sparsity after event i
  is min(1 - (1 - r)^i, s) and ends exactly at s. Events are spread evenly over the step budget, leaving the last
  1/(k + 1) of it to recover from the final prune.
- OneShotSchedule: everything at once before the first step (SNIP), then fine-tuning with the mask fixed.
- CubicSchedule: Zhu & Gupta's gradual pruning (see its docstring).
- PeriodicSchedule: k evenly spaced events without counts, for selections that decide the count (NNrelief's alpha).

Every schedule with a target ends at exactly round(N * s) pruned weights.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PruneEvent:
    step: int  # prune after this optimizer step (1-based); 0 = before the first step
    n_pruned_after: int | None  # cumulative number of pruned weights once applied; None: the selection decides


class Schedule(abc.ABC):
    @abc.abstractmethod
    def events(self, total_steps: int, n_weights: int) -> list[PruneEvent]:
        """The events for a run of `total_steps` optimizer steps over `n_weights` prunable weights."""


def _check_target(target: float) -> None:
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target}")


def _evenly_spaced(total_steps: int, k: int) -> list[int]:
    """k steps splitting the budget into k + 1 equal parts: the last part is recovery time."""
    if k and total_steps < k + 1:
        raise ValueError(
            f"{k} pruning events need at least {k + 1} training steps, got {total_steps}: "
            "give more data or epochs, or a smaller batch size"
        )
    return [max(1, (total_steps * i) // (k + 1)) for i in range(1, k + 1)]


class GeometricSchedule(Schedule):
    def __init__(self, target: float, rate: float = 0.5):
        _check_target(target)
        if not 0.0 < rate < 1.0:
            raise ValueError(f"prune rate must be in (0, 1), got {rate}")
        self.target, self.rate = target, rate

    def sparsities(self) -> list[float]:
        """Cumulative sparsity after each event."""
        if self.target == 0.0:
            return []
        k = max(1, math.ceil(math.log(1.0 - self.target) / math.log(1.0 - self.rate) - 1e-9))
        return [min(1.0 - (1.0 - self.rate) ** i, self.target) for i in range(1, k + 1)]

    def events(self, total_steps: int, n_weights: int) -> list[PruneEvent]:
        levels = self.sparsities()
        steps = _evenly_spaced(total_steps, len(levels))
        return [PruneEvent(step, round(n_weights * s)) for step, s in zip(steps, levels)]


class OneShotSchedule(Schedule):
    """Prune to the target before the first optimizer step; the mask then stays fixed (SNIP)."""

    def __init__(self, target: float):
        _check_target(target)
        self.target = target

    def events(self, total_steps: int, n_weights: int) -> list[PruneEvent]:
        return [PruneEvent(0, round(n_weights * self.target))] if self.target > 0 else []


class CubicSchedule(Schedule):
    """Gradual pruning, Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
    compression" (arXiv 1710.01878, 2017), eq. 1:

        s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3,   t in {t0, t0 + dt, ..., t0 + n * dt}

    It prunes fast while many redundant weights remain and slowly near the target. Derived from the budget T:
    t0 = 0 (the model is already trained: pruning can start at once), pruning ends at t0 + n * dt <= end * T so that
    the rest (25 % by default) is recovery time, dt = ceil(span / max_events) and n = floor(span / dt). Event j
    prunes to round(N * s_j); the last, (1 - n/n)^3 = 0, is exactly round(N * s_f). Events that would prune nothing
    new are dropped (so with initial = 0 there is none at t0).
    """

    def __init__(self, target: float, initial: float = 0.0, end: float = 0.75, max_events: int = 50):
        _check_target(target)
        if not 0.0 <= initial <= target:
            raise ValueError(f"initial sparsity must be in [0, target], got {initial}")
        if not 0.0 < end <= 1.0 or max_events < 1:
            raise ValueError("cubic schedule: end must be in (0, 1] and max_events >= 1")
        self.target, self.initial, self.end, self.max_events = target, initial, end, max_events

    def sparsity_at(self, j: int, n: int) -> float:
        return self.target + (self.initial - self.target) * (1.0 - j / n) ** 3

    def events(self, total_steps: int, n_weights: int) -> list[PruneEvent]:
        if self.target == 0.0:
            return []
        span = int(total_steps * self.end)
        if total_steps < 2 or span < 1:
            raise ValueError(f"the cubic schedule needs at least 2 training steps, got {total_steps}")
        dt = -(-span // self.max_events)  # ceil: at most max_events events, ending as close to span as dt allows
        n = span // dt
        out: list[PruneEvent] = []
        for j in range(n + 1):  # j = 0 is s_i at t0 (before the first step), nothing unless initial > 0
            count = round(n_weights * self.sparsity_at(j, n))
            if count > (out[-1].n_pruned_after if out else 0):
                out.append(PruneEvent(j * dt, count))
        return out


class PeriodicSchedule(Schedule):
    """k evenly spaced events that leave the count to the selection (NNrelief's alpha rule)."""

    def __init__(self, k: int):
        if k < 1:
            raise ValueError(f"number of prune events must be >= 1, got {k}")
        self.k = k

    def events(self, total_steps: int, n_weights: int) -> list[PruneEvent]:
        return [PruneEvent(step, None) for step in _evenly_spaced(total_steps, self.k)]
