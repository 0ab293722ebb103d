"""When to prune and how much: FlipOut's periodic geometric schedule, derived from the target sparsity.

The reference code prunes a fixed fraction r (0.5) of the remaining weights every few epochs. Here the user gives
the final sparsity s instead; the number of events is k = ceil(log(1 - s) / log(1 - r)) and the last event uses a
partial rate, so the cumulative sparsity after event i is min(1 - (1 - r)^i, s) and ends exactly at s.
Events are spread evenly over the step budget, leaving the last 1/(k + 1) of it to recover from the final prune.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PruneEvent:
    step: int  # prune after this optimizer step (1-based)
    n_pruned_after: int  # cumulative number of pruned weights once the event is applied


class GeometricSchedule:
    def __init__(self, target: float, rate: float = 0.5):
        if not 0.0 <= target < 1.0:
            raise ValueError(f"target sparsity must be in [0, 1), got {target}")
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
        if levels and total_steps < len(levels) + 1:
            raise ValueError(
                f"{len(levels)} pruning events need at least {len(levels) + 1} training steps, got {total_steps}: "
                "give more data or epochs, or a smaller batch size"
            )
        k = len(levels)
        return [
            PruneEvent(step=max(1, (total_steps * i) // (k + 1)), n_pruned_after=round(n_weights * s))
            for i, s in enumerate(levels, start=1)
        ]
