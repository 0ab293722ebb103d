"""Per-weight sign-flip counting, the signal FlipOut prunes by.

Apostol et al., "FlipOut: Uncovering Redundant Weights via Sign Flipping" (2020): after every optimizer step, a
weight whose sign differs from its sign before the step has flipped once. Weights that flip often oscillate around
zero and are likely redundant.

This runs after every step, so it must be cheap (benchmarks/flip_hook_cost.py): one compiled pass per tensor
(kernels.py) compares signs and accumulates flips in uint8, a quarter of the memory traffic of int32; the uint8
counts are folded into the int32 totals every 255 steps, before one could overflow, and whenever counts are read.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from .masks import check_saved

_FOLD_EVERY = 255


class FlipCounter:
    """Counts sign flips of named float tensors between successive calls to `update`."""

    def __init__(self, weights: dict[str, np.ndarray]):
        self._totals = {n: np.zeros(w.shape, dtype=np.int32) for n, w in weights.items()}
        self._recent = {n: np.zeros(w.shape, dtype=np.uint8) for n, w in weights.items()}
        self._prev_neg = {n: np.less(w, 0) for n, w in weights.items()}
        self._pending = 0

    @property
    def counts(self) -> dict[str, np.ndarray]:
        """Total flips per weight (int32), up to date."""
        self._fold()
        return self._totals

    def update(self, weights: dict[str, np.ndarray], keep: dict[str, np.ndarray | None] | None = None) -> None:
        """Compare each tensor's signs with the previous call's and add the flips.

        `keep` (MaskSet.zeroing_masks): zero the pruned weights first, in the same pass over memory."""
        for name, w in weights.items():
            prev, recent = kernels.flat(self._prev_neg[name]), kernels.flat(self._recent[name])
            mask = keep.get(name) if keep is not None else None
            if mask is None:
                kernels.count_flips(kernels.flat(w), prev, recent)
            else:
                kernels.zero_pruned_count_flips(kernels.flat(w), kernels.flat(mask), prev, recent)
        self._pending += 1
        if self._pending == _FOLD_EVERY:
            self._fold()

    def resync(self, name: str, w: np.ndarray) -> None:
        """Take the current signs as the reference without counting (after weights are zeroed by pruning)."""
        np.less(w, 0, out=self._prev_neg[name])

    def state_dict(self) -> dict:
        """Copies of every buffer, unfolded: folding here would move the later folds, and resuming stays exact."""
        return {"totals": _copies(self._totals), "recent": _copies(self._recent),
                "prev_neg": _copies(self._prev_neg), "pending": self._pending}

    def load_state_dict(self, state: dict) -> None:
        for key, dtype, mine in (("totals", np.int32, self._totals), ("recent", np.uint8, self._recent),
                                 ("prev_neg", bool, self._prev_neg)):
            check_saved(mine, state[key], f"flip {key}")
            for name, a in state[key].items():
                np.copyto(mine[name], np.asarray(a, dtype=dtype))
        pending = int(state["pending"])
        if not 0 <= pending < _FOLD_EVERY:
            raise ValueError(f"saved flip counter has {pending} pending steps, not in [0, {_FOLD_EVERY})")
        self._pending = pending

    def _fold(self) -> None:
        if self._pending:
            for name, recent in self._recent.items():
                self._totals[name] += recent
                recent.fill(0)
            self._pending = 0


def _copies(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {n: a.copy() for n, a in arrays.items()}
