"""The per-step loops of training and pruning, each compiled into one pass over memory with numba.

Every training step applies SGD momentum, zeroes pruned gradients, zeroes pruned weights and counts sign flips. In
numpy, flip counting alone is three passes (compare, not-equal, add) and momentum three more (four with weight
decay), and inside real training steps, where onnxruntime has just pushed these buffers out of the cache, memory
traffic is what costs. One fused pass costs about two thirds of numpy's time (benchmarks/flip_hook_cost.py measures
both). The results are bit for bit those of the numpy expressions in each docstring: IEEE float32 arithmetic
without fast-math, no reordering.

The kernels take 1-D C-contiguous views; `flat` makes them and refuses arrays a reshape would copy, since writing
into a copy would silently drop the edit. Compiled code is cached on disk (numba `cache=True`), so only the first
run on a machine pays the compile (about a second).
"""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True, boundscheck=False)


def flat(a: np.ndarray) -> np.ndarray:
    """A 1-D view sharing `a`'s memory."""
    if not a.flags.c_contiguous:
        raise ValueError(f"the compiled kernels need C-contiguous arrays, got strides {a.strides} for shape {a.shape}")
    return a.reshape(-1)


@numba.njit(inline="always")
def _count_flip(w, prev_neg, recent, i):
    neg = w[i] < 0
    recent[i] += neg != prev_neg[i]
    prev_neg[i] = neg


@_jit
def count_flips(w, prev_neg, recent):
    """neg = w < 0; recent += neg != prev_neg; prev_neg = neg (recent: uint8, the caller folds it in time)."""
    for i in range(w.size):
        _count_flip(w, prev_neg, recent, i)


@_jit
def zero_pruned(a, keep):
    """a[~keep] = 0 (exact +0.0)."""
    for i in range(a.size):
        if not keep[i]:
            a[i] = 0


@_jit
def zero_pruned_count_flips(w, keep, prev_neg, recent):
    """zero_pruned(w, keep), then count_flips(w, prev_neg, recent), in one pass."""
    for i in range(w.size):
        if not keep[i]:
            w[i] = 0
        _count_flip(w, prev_neg, recent, i)


@_jit
def add_scaled(a, b, scale):
    """a += scale * b, with `scale` of a's dtype (as numpy does for a Python float), without a temporary."""
    for i in range(a.size):
        a[i] += scale * b[i]


@_jit
def momentum(g, buf, w, mu, wd):
    """g += wd * w (only when wd); buf *= mu; buf += g; g[...] = buf: torch.optim.SGD's momentum buffer, in numpy's
    float32 order (mu and wd of g's dtype)."""
    for i in range(g.size):
        gi = g[i] + wd * w[i] if wd else g[i]  # skipped at 0, as numpy skips it: 0 * inf would be NaN
        b = buf[i] * mu + gi
        buf[i] = b
        g[i] = b
