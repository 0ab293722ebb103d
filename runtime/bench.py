"""Latency of models measured side by side: interleaved rounds in one process, so machine noise hits all alike."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort


def _time_once(session: ort.InferenceSession, feeds: dict[str, np.ndarray], iters: int) -> float:
    t0 = time.perf_counter()
    for _ in range(iters):
        session.run(None, feeds)
    return (time.perf_counter() - t0) / iters


def compare_latency(
    sessions: dict[str, ort.InferenceSession], feeds: dict[str, np.ndarray], rounds: int = 5, iters: int = 20
) -> dict[str, float]:
    """Median seconds per run for each session, measured in interleaved rounds after a warm-up."""
    for s in sessions.values():
        _time_once(s, feeds, 3)
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for name, s in sessions.items():
            samples[name].append(_time_once(s, feeds, iters))
    return {k: float(np.median(v)) for k, v in samples.items()}


def random_feeds(session: ort.InferenceSession, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for every model input, symbolic dimensions set to `batch` (the first) or 1."""
    rng = np.random.default_rng(seed)
    types = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32, "tensor(float16)": np.float16}
    feeds = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) else (batch if i == 0 else 1) for i, d in enumerate(inp.shape)]
        dtype = types.get(inp.type, np.float32)
        feeds[inp.name] = (rng.standard_normal(shape) if dtype in (np.float32, np.float64, np.float16)
                           else rng.integers(0, 2, shape)).astype(dtype)
    return feeds
