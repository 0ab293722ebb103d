"""Keep-masks of prunable tensors: True = the weight is alive. Pruned weights stay exactly zero.

Zeroing runs twice per step (gradients before it, weights after it), so it must be cheap at any sparsity: one
compiled pass over the boolean mask (kernels.py) gives exact +0.0, where a numpy scatter to pruned indices slows
down as sparsity grows and a bitwise AND with an int32 mask reads four times the mask bytes
(benchmarks/flip_hook_cost.py).
"""

from __future__ import annotations

import numpy as np

from .. import kernels


class MaskSet:
    """One boolean keep-mask per prunable tensor, with the global counts the schedule works on."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        self.keep = {n: np.ones(s, dtype=bool) for n, s in shapes.items()}
        self._n_pruned = {n: 0 for n in shapes}

    @property
    def total(self) -> int:
        return sum(m.size for m in self.keep.values())

    @property
    def n_pruned(self) -> int:
        return sum(self._n_pruned.values())

    @property
    def sparsity(self) -> float:
        return self.n_pruned / max(self.total, 1)

    def tensor_sparsity(self) -> dict[str, float]:
        return {n: self._n_pruned[n] / max(m.size, 1) for n, m in self.keep.items()}

    def prune(self, name: str, flat_idx: np.ndarray) -> None:
        """Mark flat indices of `name` as pruned (idempotent)."""
        self.keep[name].reshape(-1)[flat_idx] = False
        self._n_pruned[name] = int(self.keep[name].size - np.count_nonzero(self.keep[name]))

    def zero(self, arrays: dict[str, np.ndarray]) -> None:
        """Set pruned entries to 0 in place (weights after a step, gradients before one)."""
        for name, a in arrays.items():
            if not self._n_pruned.get(name):
                continue
            if a.flags.c_contiguous:
                kernels.zero_pruned(a.reshape(-1), self.keep[name].reshape(-1))
            else:
                a[~self.keep[name]] = 0

    def zeroing_masks(self) -> dict[str, np.ndarray | None]:
        """The keep-mask of every tensor with pruned weights (None where nothing is pruned), for kernels that zero
        and do more in the same pass (FlipCounter.update)."""
        return {n: m if self._n_pruned[n] else None for n, m in self.keep.items()}

    def state(self) -> dict[str, np.ndarray]:
        return {n: m.copy() for n, m in self.keep.items()}

    def load_state(self, keep: dict[str, np.ndarray]) -> None:
        """Take the masks of state() (a resumed run); this set must be fresh: pruning is never undone."""
        check_saved(self.keep, keep, "mask")
        for name, m in keep.items():
            self.prune(name, np.flatnonzero(~np.asarray(m, dtype=bool).reshape(-1)))


def check_saved(mine: dict[str, np.ndarray], theirs: dict[str, np.ndarray], what: str) -> None:
    """Refuse saved arrays that do not fit these tensors (names or shapes), naming the first that differs."""
    if set(mine) != set(theirs):
        raise ValueError(f"saved {what}s are for tensors {sorted(theirs)}, not {sorted(mine)}")
    for name, a in theirs.items():
        if np.shape(a) != mine[name].shape:
            raise ValueError(f"saved {what} of {name} has shape {np.shape(a)}, not {mine[name].shape}")
