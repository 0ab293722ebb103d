"""Which weights to prune, given scores (higher = more important) and the count the schedule asks for.

- GlobalSelection: the lowest-scoring alive weights over all tensors together (FlipOut, magnitude, SNIP, NNrelief).
- LayerwiseSelection: the same fraction of every tensor, the total still exact.
- ThresholdSelection: every alive weight scoring at or below a threshold, no count (NNrelief with a given alpha).

Ties are broken deterministically by position (tensor order, then flat index): a stable sort over the concatenated
scores. Counts are exact, so the achieved sparsity is the schedule's, round(N * s) / N, not an approximation of it.
Selections only ever add pruned weights: already pruned ones are never candidates, so nothing is resurrected.
"""

from __future__ import annotations

import abc

import numpy as np

from .masks import MaskSet


def prune_global(scores: dict[str, np.ndarray], masks: MaskSet, n_to_prune: int) -> dict[str, np.ndarray]:
    """Choose `n_to_prune` alive weights with the lowest scores over all tensors; return flat indices per tensor."""
    names = list(scores)
    flat = np.concatenate([scores[n].reshape(-1) for n in names]).astype(np.float64, copy=False)
    alive = np.concatenate([masks.keep[n].reshape(-1) for n in names])
    chosen = _lowest_alive(flat, alive, n_to_prune)
    out, start = {}, 0
    for n in names:
        size = scores[n].size
        lo, hi = np.searchsorted(chosen, [start, start + size])
        out[n] = chosen[lo:hi] - start
        start += size
    return out


def _lowest_alive(flat: np.ndarray, alive: np.ndarray, k: int) -> np.ndarray:
    n_alive = int(alive.sum())
    if not 0 <= k <= n_alive:
        raise ValueError(f"cannot prune {k} of {n_alive} remaining weights")
    candidates = np.flatnonzero(alive)
    order = np.argsort(flat[candidates], kind="stable")[:k]
    return np.sort(candidates[order])


def layerwise_counts(sizes: list[int], pruned: list[int], n_total: int) -> list[int]:
    """Pruned count per tensor after the event: close to n_total * size / N each, summing to exactly n_total.

    Each count stays within [already pruned, size]. Largest-remainder rounding, ties by position; a tensor that was
    rounded up at an earlier event may sit one above its quota, which the others absorb."""
    total = sum(sizes)
    if not sum(pruned) <= n_total <= total:
        raise ValueError(f"cannot prune to {n_total} of {total} weights with {sum(pruned)} already pruned")
    quota = [n_total * s / max(total, 1) for s in sizes]
    counts = [min(max(int(np.floor(q)), p), s) for q, p, s in zip(quota, pruned, sizes)]
    while (missing := n_total - sum(counts)) != 0:
        step = 1 if missing > 0 else -1
        # the tensors furthest below (above) their quota first, and only those with room to move
        movable = [i for i, c in enumerate(counts) if (c < sizes[i] if step > 0 else c > pruned[i])]
        movable.sort(key=lambda i: -step * (quota[i] - counts[i]))
        for i in movable[: abs(missing)]:
            counts[i] += step
    return counts


class Selection(abc.ABC):
    @abc.abstractmethod
    def __call__(self, scores: dict[str, np.ndarray], masks: MaskSet, n_pruned_after: int | None
                 ) -> dict[str, np.ndarray]:
        """Flat indices to prune per tensor so that `n_pruned_after` weights are pruned in all (None: no count)."""


def _count(n_pruned_after: int | None, who: str) -> int:
    if n_pruned_after is None:
        raise ValueError(f"{who} needs a target count from its schedule")
    return n_pruned_after


class GlobalSelection(Selection):
    def __call__(self, scores, masks, n_pruned_after):
        return prune_global(scores, masks, _count(n_pruned_after, "global selection") - masks.n_pruned)


class LayerwiseSelection(Selection):
    def __call__(self, scores, masks, n_pruned_after):
        names = list(scores)
        pruned = [int(masks.keep[n].size - np.count_nonzero(masks.keep[n])) for n in names]
        counts = layerwise_counts([scores[n].size for n in names], pruned,
                                  _count(n_pruned_after, "layer-wise selection"))
        return {n: _lowest_alive(scores[n].reshape(-1), masks.keep[n].reshape(-1), c - p)
                for n, c, p in zip(names, counts, pruned)}


class ThresholdSelection(Selection):
    """Prune every alive weight whose score is <= threshold; the count follows from the data."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def __call__(self, scores, masks, n_pruned_after):
        return {n: np.flatnonzero((s.reshape(-1) <= self.threshold) & masks.keep[n].reshape(-1))
                for n, s in scores.items()}
