"""The variants benchmarks/flip_hook_cost.py times: hook wrappers that keep their state across interleaved rounds,
the numpy references the compiled kernels replace, and the clocks. Not a benchmark on its own."""

from __future__ import annotations

import math
import time

import numpy as np

from onnx_flipout.pruning.flips import FlipCounter
from onnx_flipout.pruning.pruner import Pruner
from onnx_flipout.runtime.trainer import Trainer, _Momentum


class FlipCountHook:
    """Variant b: only FlipCounter.update after every step (state kept across fit calls)."""

    def __init__(self, names: list[str]):
        self.names = names
        self.flips: FlipCounter | None = None

    def on_start(self, params, total_steps):
        if self.flips is None:
            self.flips = FlipCounter({n: params[n].data for n in self.names})

    def before_step(self, step, params):
        pass

    def after_step(self, step, params):
        self.flips.update({n: params[n].data for n in self.names})

    def status(self):
        return {}


class NumpyMomentum(_Momentum):
    """Variant a0: the trainer's momentum as numpy passes (scale, add, copy back; weight decay adds a fourth)."""

    def apply(self, params):
        for name, p in params.items():
            self.apply_numpy(name, p)


class NumpyMomentumTrainer(Trainer):
    momentum_type = NumpyMomentum


class NumpyFlipCountHook(FlipCountHook):
    """Variant b0: the same counts with three numpy passes per tensor and preallocated outputs."""

    def on_start(self, params, total_steps):
        if self.flips is None:
            self.flips = {n: (np.less(params[n].data, 0), np.empty(params[n].data.shape, bool),
                              np.zeros(params[n].data.shape, np.uint8)) for n in self.names}

    def after_step(self, step, params):
        for name in self.names:
            prev, cur, recent = self.flips[name]
            np.less(params[name].data, 0, out=cur)
            np.not_equal(cur, prev, out=prev)  # prev now holds "flipped"
            np.add(recent, prev.view(np.uint8), out=recent)
            self.flips[name] = (cur, prev, recent)  # a real counter folds recent into int32 every 255 steps


class PersistentPruner:
    """A Pruner set up once for a realistic run (then pruned to 50 %); later fit calls keep its state."""

    def __init__(self, pruner: Pruner, realistic_total: int, timed_steps: int):
        self.pruner, self.realistic_total, self.timed_steps = pruner, realistic_total, timed_steps
        self.ready = False

    def on_start(self, params, total_steps):
        if self.ready:
            return
        p = self.pruner
        p.on_start(params, self.realistic_total)
        first_event = min(p._events, default=math.inf)
        if first_event <= self.timed_steps:
            raise RuntimeError(f"a pruning event (step {first_event}) falls inside the timed window "
                               f"({self.timed_steps} steps): raise --dataset-size or lower --steps")
        p.prune_to(round(0.5 * p.masks.total), p._weights(params))
        self.ready = True

    def before_step(self, step, params):
        self.pruner.before_step(step, params)

    def after_step(self, step, params):
        self.pruner.after_step(step, params)

    def status(self):
        return self.pruner.status()


class Timed:
    """Wraps a hook; accumulates the perf_counter time of its before_step + after_step."""

    def __init__(self, inner):
        self.inner, self.seconds, self.calls = inner, 0.0, 0

    def on_start(self, params, total_steps):
        self.seconds, self.calls = 0.0, 0
        self.inner.on_start(params, total_steps)

    def before_step(self, step, params):
        t0 = time.perf_counter()
        self.inner.before_step(step, params)
        self.seconds += time.perf_counter() - t0

    def after_step(self, step, params):
        t0 = time.perf_counter()
        self.inner.after_step(step, params)
        self.seconds += time.perf_counter() - t0
        self.calls += 1

    def status(self):
        return self.inner.status()


class StepClock:
    """Placed last: the time of every after_step; consecutive differences are whole training steps."""

    def __init__(self):
        self.stamps: list[float] = []

    def on_start(self, params, total_steps):
        self.stamps = []

    def before_step(self, step, params):
        pass

    def after_step(self, step, params):
        self.stamps.append(time.perf_counter())

    def status(self):
        return {}

    def mean_step(self) -> float:
        return (self.stamps[-1] - self.stamps[0]) / (len(self.stamps) - 1)
