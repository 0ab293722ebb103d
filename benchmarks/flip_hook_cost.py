"""Per-step cost of the FlipOut hooks relative to a bare training step, measured side by side in one process.

Method
------
* Model: ``build_mlp((1024, 768, 256, 10))`` (Gemm + Relu, 986,634 parameters, of which 985,600 in the three prunable
  Gemm weights), trained through the real path: ``build_artifacts(..., cross-entropy, "sgd")`` and
  ``Trainer.fit`` (SGD with the trainer's momentum 0.9), batch 32, random inputs and random labels.
* Variants, each with its own ``Trainer`` (own weights, own onnxruntime session) built from the same artifacts:
    a. no hook;
    b. flip counting only: a hook calling ``FlipCounter.update`` on the prunable weights after every step;
    c. the full ``Pruner`` (``FlipOutScore(p=2)``, ``GeometricSchedule(target, rate 0.5)``), already pruned to 50 %
       right after ``on_start`` so that re-masking gradients and weights touches real indices in every timed step;
    d. as c, plus gradient noise lambda = 0.1 (the pre-drawn pool of ``GradientNoise``).
  The pruners are set up once and keep their state across rounds; their schedule is built for a realistic run
  (``--dataset-size`` samples x 20 epochs), so no pruning event falls inside a timed window (checked).
* Interleaved rounds a, b, c, d, a, b, c, d, ... after one untimed warm-up round each, so machine noise hits all
  variants alike. Each round is one ``Trainer.fit`` of ``--steps`` steps. A clock hook placed last records the time at
  every ``after_step``; the differences are whole steps (forward/backward, hooks, momentum, optimizer, feeding). Per
  round we take the median step, and report the median over rounds.
* Second, less noisy measure: the hook's ``before_step`` + ``after_step`` are wrapped in ``time.perf_counter`` inside
  the same real steps ("in-step"), and also called alone in a tight loop on the same live weights ("isolated", warm
  caches, a lower bound). Overhead = hook time / bare step time of (a).
* Pruning events are periodic, not per step: one ``prune_to`` per scheduled event is timed on copies of variant c's
  trained weights and flip counts, and amortized over the steps between events of the realistic run.
* If the hook overhead of b or c exceeds 10 % (or with ``--profile``), the hook is broken down into its numpy
  operations and timed one by one.

Prints, never asserts speed; exits non-zero only on errors.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from onnx_flipout.demo import build_mlp
from onnx_flipout.hooks import ParamView
from onnx_flipout.passes.prunable import find_prunable_weights, find_trainable_params
from onnx_flipout.pruning.flips import FlipCounter
from onnx_flipout.pruning.pruner import Pruner
from onnx_flipout.pruning.schedule import GeometricSchedule
from onnx_flipout.pruning.scores import FlipOutScore
from onnx_flipout.runtime.artifacts import build_artifacts
from onnx_flipout.runtime.losses import LossSpec
from onnx_flipout.runtime.trainer import Trainer, TrainSettings

LAYERS = (1024, 768, 256, 10)
BATCH = 32
EPOCHS_REALISTIC = 20


# ----------------------------------------------------------------------------------------------------------- hooks


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

    def reset(self):
        self.seconds, self.calls = 0.0, 0

    def on_start(self, params, total_steps):
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

    def median_step(self) -> float:
        return float(np.median(np.diff(self.stamps)))


# ---------------------------------------------------------------------------------------------------------- helpers


def _median_time(fn, reps: int) -> float:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return float(np.median(out))


def _copy_params(params: dict[str, ParamView]) -> dict[str, ParamView]:
    return {n: ParamView(p.data.copy(), p.grad.copy()) for n, p in params.items()}


def profile_hook(pruner: Pruner, params: dict[str, ParamView], reps: int) -> list[tuple[str, float]]:
    """Time the numpy operations of one Pruner step one by one, on copies of the live tensors (ms per step)."""
    params = _copy_params(params)
    names = pruner.names
    grads = {n: params[n].grad for n in names}
    weights = {n: params[n].data for n in names}
    masks, flips = pruner.masks, pruner.flips
    rows = [
        ("dict views {n: params[n].data} (x2)", _median_time(lambda: ({n: params[n].grad for n in names},
                                                                    {n: params[n].data for n in names}), reps)),
        ("MaskSet.zero(grads)  [scatter a[idx] = 0]", _median_time(lambda: masks.zero(grads), reps)),
        ("MaskSet.zero(weights) [scatter a[idx] = 0]", _median_time(lambda: masks.zero(weights), reps)),
    ]
    cur = {n: np.empty(w.shape, bool) for n, w in weights.items()}
    prev = {n: np.less(w, 0) for n, w in weights.items()}
    counts = {n: np.zeros(w.shape, np.int32) for n, w in weights.items()}
    c8 = {n: np.zeros(w.shape, np.uint8) for n, w in weights.items()}
    rows += [
        ("  flips: np.less(w, 0, out=cur)", _median_time(
            lambda: [np.less(weights[n], 0, out=cur[n]) for n in names], reps)),
        ("  flips: np.not_equal(cur, prev, out=prev)", _median_time(
            lambda: [np.not_equal(cur[n], prev[n], out=prev[n]) for n in names], reps)),
        ("  flips: np.add(int32, bool, out, unsafe)", _median_time(
            lambda: [np.add(counts[n], prev[n], out=counts[n], casting="unsafe") for n in names], reps)),
        ("FlipCounter.update (total)", _median_time(lambda: flips.update(weights), reps)),
    ]
    rows.append(("  alt flips: uint8 += flipped.view(uint8)", _median_time(
        lambda: [np.add(c8[n], prev[n].view(np.uint8), out=c8[n]) for n in names], reps)))
    if pruner.noise is not None:
        g0 = {n: g.copy() for n, g in grads.items()}
        rows.append(("GradientNoise.add (total)", _median_time(lambda: [pruner.noise.add(g) for g in g0.values()], reps)))
        flat = next(iter(g0.values())).reshape(-1)  # the largest tensor
        pool = pruner.noise._pool[: flat.size]
        sigma64 = 0.1 * float(np.linalg.norm(flat)) / np.sqrt(flat.size)  # np.float64, as in noise.py
        rows += [
            ("  noise: np.linalg.norm(g) (largest tensor)", _median_time(lambda: np.linalg.norm(flat), reps)),
            ("  noise: g += np.float64 sigma * pool (largest)", _median_time(
                lambda: flat.__iadd__(sigma64 * pool), reps)),
            ("  alt noise: g += float(sigma) * pool (largest)", _median_time(
                lambda: flat.__iadd__(float(sigma64) * pool), reps)),
        ]
    # candidate replacements for the scatter (for the report, not used by the library)
    pruned = {n: ~m for n, m in masks.keep.items()}
    keepf = {n: m.astype(np.float32) for n, m in masks.keep.items()}
    keepi = {n: np.where(m, np.int32(-1), np.int32(0)) for n, m in masks.keep.items()}
    rows += [
        ("alt mask: np.putmask(a, pruned_bool, 0) (x1)", _median_time(
            lambda: [np.putmask(grads[n], pruned[n], 0) for n in names], reps)),
        ("alt mask: np.multiply(a, keep_f32, out=a) (x1)", _median_time(
            lambda: [np.multiply(grads[n], keepf[n], out=grads[n]) for n in names], reps)),
        ("alt mask: bitwise_and(a.view(i32), keep_i32) (x1)", _median_time(
            lambda: [np.bitwise_and(grads[n].view(np.int32), keepi[n], out=grads[n].view(np.int32))
                     for n in names], reps)),
    ]
    return [(k, v * 1e3) for k, v in rows]


# ------------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60, help="timed training steps per variant per round (default 60)")
    ap.add_argument("--rounds", type=int, default=16, help="interleaved rounds (default 16)")
    ap.add_argument("--dataset-size", type=int, default=50_000,
                    help="samples of the realistic run the schedule is built for (x20 epochs; default 50000)")
    ap.add_argument("--target", type=float, default=0.9, help="final sparsity of the schedule (default 0.9)")
    ap.add_argument("--noise", type=float, default=0.1, help="gradient noise lambda of variant d (default 0.1)")
    ap.add_argument("--prune-reps", type=int, default=3, help="repetitions of the timed pruning events (default 3)")
    ap.add_argument("--profile", action="store_true", help="always print the per-operation breakdown")
    args = ap.parse_args(argv)
    if args.steps < 3 or args.rounds < 1:
        ap.error("need --steps >= 3 and --rounds >= 1")

    t_start = time.perf_counter()
    model = build_mlp(LAYERS, seed=0)
    n_params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    prunable = [s.name for s in find_prunable_weights(model)]
    n_prunable = sum(s.size for s in find_prunable_weights(model))
    trainable = find_trainable_params(model)

    rng = np.random.default_rng(0)
    n = args.steps * BATCH
    x = rng.standard_normal((n, LAYERS[0])).astype(np.float32)
    y = rng.integers(0, LAYERS[-1], n).astype(np.int64)

    steps_per_epoch = math.ceil(args.dataset_size / BATCH)
    realistic_total = steps_per_epoch * EPOCHS_REALISTIC
    schedule = GeometricSchedule(args.target, rate=0.5)
    events = schedule.events(realistic_total, n_prunable)
    period = realistic_total / (len(events) + 1)  # steps between events (events are evenly spread)

    settings = TrainSettings(epochs=1, batch_size=BATCH, lr=0.01, momentum=0.9, progress=False)
    tmp = tempfile.TemporaryDirectory(prefix="flip-hook-cost-")  # kept until the end: the sessions came from it
    try:
        return _run(args, tmp.name, t_start, model, n_params, prunable, n_prunable, trainable, x, y,
                    realistic_total, schedule, events, period, settings)
    finally:
        tmp.cleanup()


def _run(args, tmp, t_start, model, n_params, prunable, n_prunable, trainable, x, y,
         realistic_total, schedule, events, period, settings) -> int:
    arts = build_artifacts(model, trainable, "logits", LossSpec("cross_entropy"), "sgd", Path(tmp))
    variants: dict[str, tuple[Trainer, Timed | None]] = {}
    variants["a  no hook"] = (Trainer(arts, settings), None)
    variants["b  flip counting"] = (Trainer(arts, settings), Timed(FlipCountHook(prunable)))
    pr_c = Pruner(prunable, FlipOutScore(2.0), schedule)
    variants["c  Pruner (FlipOut, 50 % masked)"] = (
        Trainer(arts, settings), Timed(PersistentPruner(pr_c, realistic_total, args.steps)))
    pr_d = Pruner(prunable, FlipOutScore(2.0), schedule, noise=args.noise, seed=0)
    variants[f"d  Pruner + noise {args.noise:g}"] = (
        Trainer(arts, settings), Timed(PersistentPruner(pr_d, realistic_total, args.steps)))

    clock = StepClock()
    step_s: dict[str, list[float]] = {k: [] for k in variants}
    hook_s: dict[str, list[float]] = {k: [] for k in variants}
    for rnd in range(args.rounds + 1):  # round 0 is an untimed warm-up
        for name, (trainer, hook) in variants.items():
            hooks = ([hook] if hook else []) + [clock]
            if hook:
                hook.reset()
            trainer.fit({"x": x}, y, hooks)
            if rnd == 0:
                continue
            step_s[name].append(clock.median_step())
            if hook:
                hook_s[name].append(hook.seconds / hook.calls)

    # isolated hook calls on the same live weights (step numbers far from any pruning event)
    iso_s: dict[str, float] = {}
    for name, (trainer, hook) in variants.items():
        if hook is None:
            continue
        inner, params = hook.inner, trainer.params

        def call(inner=inner, params=params):
            inner.before_step(1, params)
            inner.after_step(1, params)

        for _ in range(5):
            call()
        iso_s[name] = _median_time(call, 100)

    # pruning events, on copies of variant c's weights and flip counts
    _, hook_c = variants["c  Pruner (FlipOut, 50 % masked)"]
    params_c = variants["c  Pruner (FlipOut, 50 % masked)"][0].params
    event_s: list[list[float]] = [[] for _ in events]
    for _ in range(args.prune_reps):
        pr = Pruner(prunable, FlipOutScore(2.0), schedule)
        pc = _copy_params(params_c)
        pr.on_start(pc, realistic_total)
        for name, c in pr_c.flips.counts.items():
            pr.flips.counts[name][...] = c
        w = pr._weights(pc)
        for i, e in enumerate(events):
            t0 = time.perf_counter()
            pr.prune_to(e.n_pruned_after, w)
            event_s[i].append(time.perf_counter() - t0)
    event_med = [float(np.median(v)) for v in event_s]
    mean_event = float(np.mean(event_med)) if event_med else 0.0

    # ---------------------------------------------------------------------------------------------------- report
    bare = float(np.median(step_s["a  no hook"]))
    print(f"model: MLP {LAYERS}, {n_params:,} parameters ({n_prunable:,} prunable in {len(prunable)} Gemm weights); "
          f"batch {BATCH}, SGD momentum 0.9, random data")
    print(f"timing: {args.rounds} interleaved rounds x {args.steps} steps per variant (+1 warm-up round); "
          f"medians over rounds of the per-round median step")
    print()
    print(f"{'variant':36s} {'ms/step':>8s} {'vs (a)':>8s} {'hook in-step':>13s} {'hook/(a)':>9s} "
          f"{'hook isolated':>14s} {'iso/(a)':>8s}")
    for name in variants:
        ms = float(np.median(step_s[name]))
        line = f"{name:36s} {ms * 1e3:8.3f} {100 * (ms / bare - 1):+7.1f}%"
        if hook_s[name]:
            h = float(np.median(hook_s[name]))
            line += f" {h * 1e3:10.3f} ms {100 * h / bare:8.1f}% {iso_s[name] * 1e3:11.3f} ms {100 * iso_s[name] / bare:7.1f}%"
        print(line)
    spread = {k: (min(v) * 1e3, max(v) * 1e3) for k, v in step_s.items()}
    print("per-round step medians, min..max ms: " +
          ", ".join(f"{k.split()[0]} {lo:.2f}..{hi:.2f}" for k, (lo, hi) in spread.items()))
    print()
    print(f"pruning events ({len(events)}; target {args.target:g}, rate 0.5) for a {EPOCHS_REALISTIC}-epoch run on "
          f"{args.dataset_size:,} samples = {realistic_total:,} steps, one event every {period:,.0f} steps:")
    for e, s in zip(events, event_med):
        print(f"  step {e.step:>7,}: prune_to {e.n_pruned_after:>9,}  {s * 1e3:8.1f} ms")
    amort = mean_event / period
    print(f"  mean event {mean_event * 1e3:.1f} ms = {mean_event / bare:.0f} bare steps; amortized "
          f"{amort * 1e3:.4f} ms/step = {100 * amort / bare:.3f} % of a bare step")

    worst = max(float(np.median(hook_s[k])) for k in list(variants)[1:3]) / bare
    if args.profile or worst > 0.10:
        print()
        print(f"profile of the Pruner hook of variant d (hook of b or c = {100 * worst:.1f} % of a step"
              f"{' > 10 %' if worst > 0.10 else ''}); ms per step, median of 50, copies of the live tensors:")
        for label, ms in profile_hook(pr_d, variants[f"d  Pruner + noise {args.noise:g}"][0].params, 50):
            if label:
                print(f"  {label:50s} {ms:8.3f}")
    print()
    print(f"total benchmark time {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
