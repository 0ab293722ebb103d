"""Per-weight sign-flip counting, the signal FlipOut prunes by.

Apostol et al., "FlipOut: Uncovering Redundant Weights via Sign Flipping" (2020): after every optimizer step, a
weight whose sign differs from its sign before the step has flipped once. Weights that flip often oscillate around
zero and are likely redundant.

This runs after every step, so it must be cheap (FIELD-NOTES: ~6 % of a step at 10 M params with boolean sign
buffers). Every operation writes into preallocated buffers; nothing is allocated per step.
"""

from __future__ import annotations

import numpy as np


class FlipCounter:
    """Counts sign flips of named float tensors between successive calls to `update`."""

    def __init__(self, weights: dict[str, np.ndarray]):
        self.counts = {n: np.zeros(w.shape, dtype=np.int32) for n, w in weights.items()}
        self._prev_neg = {n: np.less(w, 0) for n, w in weights.items()}
        self._cur_neg = {n: np.empty(w.shape, dtype=bool) for n, w in weights.items()}

    def update(self, weights: dict[str, np.ndarray]) -> None:
        """Compare each tensor's signs with the previous call's and add the flips."""
        for name, w in weights.items():
            cur, prev = self._cur_neg[name], self._prev_neg[name]
            np.less(w, 0, out=cur)
            np.not_equal(cur, prev, out=prev)  # prev now holds "flipped", reused as scratch
            np.add(self.counts[name], prev, out=self.counts[name], casting="unsafe")
            self._prev_neg[name], self._cur_neg[name] = cur, prev

    def resync(self, name: str, w: np.ndarray) -> None:
        """Take the current signs as the reference without counting (after weights are zeroed by pruning)."""
        np.less(w, 0, out=self._prev_neg[name])
