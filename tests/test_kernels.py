"""The compiled per-step loops (onnx_flipout/kernels.py) against the numpy expressions they replace, bit for
bit, on special values (signed zeros, infinities, NaN, denormals) as well as ordinary ones."""

import numpy as np
import pytest

from onnx_flipout import kernels
from onnx_flipout.pruning.flips import FlipCounter
from onnx_flipout.pruning.masks import MaskSet

SPECIALS = [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -1e-45, 1e-300, -1e-300]


def _values(dtype, n=4099, seed=0):
    rng = np.random.default_rng(seed)
    special = rng.choice(np.array(SPECIALS, dtype=dtype), n)
    return np.where(rng.random(n) < 0.3, special, rng.normal(size=n)).astype(dtype)


def _bits(a):
    return a.view(np.uint8).copy()


def _same(a, b):
    """Bit for bit, signed zeros included, except NaN payloads: which operand's NaN propagates is up to the CPU
    instruction (numpy's SIMD loops and a scalar loop may pick differently), and no result depends on it."""
    nan = np.isnan(a)
    return np.array_equal(nan, np.isnan(b)) and np.array_equal(_bits(np.where(nan, 0, a)), _bits(np.where(nan, 0, b)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_count_flips_equals_three_numpy_passes(dtype):
    w, prev = _values(dtype, seed=1), _values(dtype, seed=2) < 0
    recent = np.random.default_rng(3).integers(0, 200, w.size).astype(np.uint8)
    want_recent = recent + ((w < 0) != prev).astype(np.uint8)
    kernels.count_flips(w, prev, recent)
    assert np.array_equal(recent, want_recent) and np.array_equal(prev, w < 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_pruned_and_the_fused_pass_equal_numpy(dtype):
    w, keep = _values(dtype), np.random.default_rng(4).random(4099) < 0.5
    want = w.copy()
    want[~keep] = 0
    got = w.copy()
    kernels.zero_pruned(got, keep)
    assert np.array_equal(_bits(got), _bits(want))  # exact +0.0 where pruned, NaN bits untouched elsewhere
    prev = _values(dtype, seed=5) < 0
    recent, want_recent = np.zeros(w.size, np.uint8), ((want < 0) != prev).astype(np.uint8)
    fused = w.copy()
    kernels.zero_pruned_count_flips(fused, keep, prev, recent)
    assert np.array_equal(_bits(fused), _bits(want))
    assert np.array_equal(recent, want_recent) and np.array_equal(prev, want < 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_scaled_equals_numpy_with_a_python_float(dtype):
    a, b = _values(dtype, seed=6), np.random.default_rng(7).normal(size=4099).astype(np.float32)
    sigma = 0.1234567891234
    want = a.copy()
    want += sigma * b
    kernels.add_scaled(a, b, np.float32(sigma))
    assert np.array_equal(_bits(a), _bits(want))


def test_flat_refuses_a_view_that_reshape_would_copy():
    a = np.zeros((4, 6), np.float32)
    assert np.shares_memory(kernels.flat(a), a)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.flat(a[:, ::2])


def test_masks_zero_a_non_contiguous_view_through_numpy():
    masks = MaskSet({"w": (3, 2)})
    masks.prune("w", np.array([1, 4]))
    full = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    masks.zero({"w": full[:, ::2]})
    assert full.tolist() == [[1, 2, 0, 4], [5, 6, 7, 8], [0, 10, 11, 12]]


def test_counting_with_keep_equals_zeroing_then_counting():
    rng = np.random.default_rng(8)
    shapes = {"a": (17, 5), "b": (9,)}
    masks = MaskSet(shapes)
    masks.prune("a", rng.choice(85, 40, replace=False))  # "b" has nothing pruned: its mask is None
    w1 = {n: rng.normal(size=s).astype(np.float32) for n, s in shapes.items()}
    w2 = {n: a.copy() for n, a in w1.items()}
    fused, separate = FlipCounter(w1), FlipCounter(w2)
    assert masks.zeroing_masks()["b"] is None
    for _ in range(300):
        for n in shapes:
            step = rng.normal(scale=0.5, size=shapes[n]).astype(np.float32)
            w1[n] += step
            w2[n] += step
        fused.update(w1, keep=masks.zeroing_masks())
        masks.zero(w2)
        separate.update(w2)
        assert all(np.array_equal(w1[n], w2[n]) for n in shapes)
    assert all(np.array_equal(fused.counts[n], separate.counts[n]) for n in shapes)
    assert fused.counts["a"].reshape(-1)[~masks.keep["a"].reshape(-1)].max() <= 1  # pruned: at most the first zeroing


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf - inf in the numpy reference, on purpose
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_momentum_equals_numpy_sgd_momentum(wd):
    """The trainer's numpy momentum (its path for the first step) and the kernel, over steps, bit for bit."""
    rng = np.random.default_rng(9)
    w = _values(np.float32, seed=10)
    buf_np = rng.normal(size=w.size).astype(np.float32)
    buf_k = buf_np.copy()
    for step in range(5):
        g = _values(np.float32, seed=20 + step)
        g_np, g_k = g.copy(), g.copy()
        if wd:
            g_np += wd * w
        buf_np *= 0.9
        buf_np += g_np
        g_np[...] = buf_np
        kernels.momentum(g_k, buf_k, w, np.float32(0.9), np.float32(wd))
        assert _same(g_k, g_np) and _same(buf_k, buf_np)
