"""Keep-masks of prunable tensors: True = the weight is alive. Pruned weights stay exactly zero."""

from __future__ import annotations

import numpy as np


class MaskSet:
    """One boolean keep-mask per prunable tensor, with the global counts the schedule works on."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        self.keep = {n: np.ones(s, dtype=bool) for n, s in shapes.items()}
        # flat indices of pruned entries: re-masking touches only these, not the whole tensor
        self._pruned_idx = {n: np.empty(0, dtype=np.int64) for n in shapes}

    @property
    def total(self) -> int:
        return sum(m.size for m in self.keep.values())

    @property
    def n_pruned(self) -> int:
        return sum(idx.size for idx in self._pruned_idx.values())

    @property
    def sparsity(self) -> float:
        return self.n_pruned / max(self.total, 1)

    def tensor_sparsity(self) -> dict[str, float]:
        return {n: self._pruned_idx[n].size / max(m.size, 1) for n, m in self.keep.items()}

    def prune(self, name: str, flat_idx: np.ndarray) -> None:
        """Mark flat indices of `name` as pruned (idempotent)."""
        self.keep[name].reshape(-1)[flat_idx] = False
        self._pruned_idx[name] = np.flatnonzero(~self.keep[name])

    def zero(self, arrays: dict[str, np.ndarray]) -> None:
        """Set pruned entries to 0 in place (weights after a step, gradients before one)."""
        for name, idx in self._pruned_idx.items():
            if idx.size and name in arrays:
                arrays[name].reshape(-1)[idx] = 0

    def state(self) -> dict[str, np.ndarray]:
        return {n: m.copy() for n, m in self.keep.items()}
