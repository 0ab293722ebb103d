"""Which weights to prune: the globally lowest-scoring alive weights, to an exact count.

Ties are broken deterministically by position (tensor order, then flat index): a stable sort over the concatenated
scores. The count is exact, so the achieved sparsity is the schedule's, not an approximation of it.
"""

from __future__ import annotations

import numpy as np

from .masks import MaskSet


def prune_global(scores: dict[str, np.ndarray], masks: MaskSet, n_to_prune: int) -> dict[str, np.ndarray]:
    """Choose `n_to_prune` alive weights with the lowest scores over all tensors; return flat indices per tensor."""
    names = list(scores)
    flat = np.concatenate([scores[n].reshape(-1) for n in names]).astype(np.float64, copy=False)
    alive = np.concatenate([masks.keep[n].reshape(-1) for n in names])
    n_alive = int(alive.sum())
    if not 0 <= n_to_prune <= n_alive:
        raise ValueError(f"cannot prune {n_to_prune} of {n_alive} remaining weights")
    candidates = np.flatnonzero(alive)
    order = np.argsort(flat[candidates], kind="stable")[:n_to_prune]
    chosen = np.sort(candidates[order])
    out, start = {}, 0
    for n in names:
        size = scores[n].size
        lo, hi = np.searchsorted(chosen, [start, start + size])
        out[n] = chosen[lo:hi] - start
        start += size
    return out
