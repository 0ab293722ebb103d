"""Per-step cost of the FlipOut hooks relative to a bare training step, measured side by side in one process.

Method
------
* Model: ``build_mlp((1024, 768, 256, 10))`` (Gemm + Relu, 986,634 parameters, of which 985,600 in the three prunable
  Gemm weights), trained through the real path: ``build_artifacts(..., cross-entropy, "sgd")`` and
  ``Trainer.fit`` (SGD with the trainer's momentum 0.9), batch 32, random inputs and random labels.
* Variants, each with its own ``Trainer`` (own weights, own onnxruntime session) built from the same artifacts:
    a. no hook;
    a0. no hook, with the trainer's SGD momentum in numpy (three passes per tensor without weight decay: the
       trainer before its kernel),
       to show what the momentum kernel saves every step;
    b. flip counting only: a hook calling ``FlipCounter.update`` on the prunable weights after every step (one
       compiled pass per tensor, onnx_flipout/kernels.py);
    b0. the same counts in numpy, three passes per tensor (``np.less``, ``np.not_equal``, ``np.add`` into uint8 with
       preallocated outputs: the FlipCounter before the kernels), kept as the reference the kernels must beat;
    c. the full ``Pruner`` (``FlipOutScore(p=2)``, ``GeometricSchedule(target, rate 0.5)``), already pruned to 50 %
       right after ``on_start`` so that re-masking gradients and weights touches real indices in every timed step;
    d. as c, plus gradient noise lambda = 0.1 (the pre-drawn pool of ``GradientNoise``).
  The pruners are set up once and keep their state across rounds; their schedule is built for a realistic run
  (``--dataset-size`` samples x 20 epochs), so no pruning event falls inside a timed window (checked).
* Interleaved rounds a, a0, b, b0, c, d, a, ... after one untimed warm-up round each, so machine noise hits all
  variants alike. Each round is one ``Trainer.fit`` of ``--steps`` steps. A clock hook placed last records the time at
  every ``after_step``; a round's step time is the mean of its whole steps (forward/backward, hooks, momentum,
  optimizer, feeding), so periodic work (the uint8 fold every 255 steps) counts as it costs.
* Hook cost, three ways, all as a fraction of the bare step (a) and all as means, so numerator and denominator are the
  same statistic:
    - "hook in-step": ``before_step`` + ``after_step`` wrapped in ``time.perf_counter`` inside the real steps, mean
      per step, divided by the same round's bare step (paired), median over rounds;
    - "step delta": the variant's step minus the same round's bare step (paired), median over rounds: what the hook
      really adds to training, including any effect of its cache traffic on onnxruntime's next step; noisier;
    - "hook isolated": the hook called alone in a tight loop on the same live weights (warm caches, a lower bound).
  Inside real steps the hook meets cold caches: onnxruntime's step evicts the weights and the flip buffers.
* Pruning events are periodic, not per step: one ``prune_to`` per scheduled event is timed on copies of variant c's
  trained weights and flip counts, and amortized over the steps between events of the realistic run.
* If the in-step cost of b exceeds 10 % (or with ``--profile``), the Pruner's per-step work is broken down into its
  operations and timed one by one (isolated).

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

from hook_variants import (  # benchmarks/, beside this script
    FlipCountHook, NumpyFlipCountHook, NumpyMomentumTrainer, PersistentPruner, StepClock, Timed,
)

LAYERS = (1024, 768, 256, 10)
BATCH = 32
EPOCHS_REALISTIC = 20


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
    """Time the per-step operations of a Pruner one by one, on copies of the live tensors (ms per step)."""
    params = _copy_params(params)
    names = pruner.names
    grads = {n: params[n].grad for n in names}
    weights = {n: params[n].data for n in names}
    masks, flips = pruner.masks, FlipCounter(weights)
    numpy_counts = NumpyFlipCountHook(names)
    numpy_counts.on_start(params, 0)
    rows = [
        ("before: MaskSet.zero(grads)", lambda: masks.zero(grads)),
        ("after:  FlipCounter.update(keep=masks), one fused pass",
         lambda: flips.update(weights, masks.zeroing_masks())),
        ("        MaskSet.zero(weights) alone", lambda: masks.zero(weights)),
        ("        FlipCounter.update alone", lambda: flips.update(weights)),
        ("        flip counting in numpy, three passes (b0)", lambda: numpy_counts.after_step(1, params)),
    ]
    if pruner.noise is not None:
        g0 = {n: g.copy() for n, g in grads.items()}
        rows.insert(0, ("before: GradientNoise.add", lambda: [pruner.noise.add(g) for g in g0.values()]))
    return [(label, _median_time(fn, reps) * 1e3) for label, fn in rows]


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

    model = build_mlp(LAYERS, seed=0)
    tmp = tempfile.TemporaryDirectory(prefix="flip-hook-cost-")  # kept until the end: the sessions came from it
    try:
        return _run(args, Path(tmp.name), model)
    finally:
        tmp.cleanup()


def _run(args, tmp: Path, model) -> int:
    t_start = time.perf_counter()
    n_params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    prunable = [s.name for s in find_prunable_weights(model)]
    n_prunable = sum(s.size for s in find_prunable_weights(model))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.steps * BATCH, LAYERS[0])).astype(np.float32)
    y = rng.integers(0, LAYERS[-1], args.steps * BATCH).astype(np.int64)
    realistic_total = math.ceil(args.dataset_size / BATCH) * EPOCHS_REALISTIC
    schedule = GeometricSchedule(args.target, rate=0.5)
    events = schedule.events(realistic_total, n_prunable)
    period = realistic_total / (len(events) + 1)  # steps between events (events are evenly spread)

    settings = TrainSettings(epochs=1, batch_size=BATCH, lr=0.01, momentum=0.9, progress=False)
    arts = build_artifacts(model, find_trainable_params(model), "logits", LossSpec("cross_entropy"), "sgd", tmp)
    pr_c = Pruner(prunable, FlipOutScore(2.0), schedule)
    pr_d = Pruner(prunable, FlipOutScore(2.0), schedule, noise=args.noise, seed=0)
    bare_name = "a  no hook"
    variants = {  # name: (its own Trainer, its timed hook or None)
        bare_name: (Trainer(arts, settings), None),
        "a0 no hook, numpy momentum": (NumpyMomentumTrainer(arts, settings), None),
        "b  flip counting": (Trainer(arts, settings), Timed(FlipCountHook(prunable))),
        "b0 flip counting, numpy 3 passes": (Trainer(arts, settings), Timed(NumpyFlipCountHook(prunable))),
        "c  Pruner (FlipOut, 50 % masked)":
            (Trainer(arts, settings), Timed(PersistentPruner(pr_c, realistic_total, args.steps))),
        f"d  Pruner + noise {args.noise:g}":
            (Trainer(arts, settings), Timed(PersistentPruner(pr_d, realistic_total, args.steps))),
    }

    clock = StepClock()
    step_s: dict[str, list[float]] = {k: [] for k in variants}  # per round: mean step
    hook_s: dict[str, list[float]] = {k: [] for k in variants}  # per round: mean hook time per step
    for rnd in range(args.rounds + 1):  # round 0 is an untimed warm-up
        for name, (trainer, hook) in variants.items():
            trainer.fit({"x": x}, y, ([hook] if hook else []) + [clock])
            if rnd:
                step_s[name].append(clock.mean_step())
                if hook:
                    hook_s[name].append(hook.seconds / hook.calls)
    bare_rounds = np.array(step_s[bare_name])
    bare = float(np.median(bare_rounds))

    # isolated hook calls on the same live weights (step numbers far from any pruning event)
    iso_s: dict[str, float] = {}
    for name, (trainer, hook) in variants.items():
        if hook is not None:
            def call(inner=hook.inner, params=trainer.params):
                inner.before_step(1, params)
                inner.after_step(1, params)

            for _ in range(5):
                call()
            iso_s[name] = _median_time(call, 100)

    # pruning events, on copies of variant c's weights and flip counts
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
    print(f"model: MLP {LAYERS}, {n_params:,} parameters ({n_prunable:,} prunable in {len(prunable)} Gemm weights); "
          f"batch {BATCH}, SGD momentum 0.9, random data")
    print(f"timing: {args.rounds} interleaved rounds x {args.steps} steps per variant (+1 warm-up round); per round "
          f"the mean step and mean hook time, paired with the same round's bare step; medians over rounds")
    print()
    print(f"{'variant':36s} {'ms/step':>8s} {'step delta':>11s} {'hook in-step':>13s} {'of (a)':>7s} "
          f"{'hook isolated':>14s} {'of (a)':>7s}")
    in_step: dict[str, float] = {}
    for name in variants:
        rounds = np.array(step_s[name])
        line = f"{name:36s} {np.median(rounds) * 1e3:8.3f}"
        if name != bare_name:
            line += f" {100 * float(np.median((rounds - bare_rounds) / bare_rounds)):+10.1f}%"
        if hook_s[name]:
            in_step[name] = float(np.median(np.array(hook_s[name]) / bare_rounds))
            line += (f" {np.median(hook_s[name]) * 1e3:10.3f} ms {100 * in_step[name]:6.1f}% "
                     f"{iso_s[name] * 1e3:11.3f} ms {100 * iso_s[name] / bare:6.1f}%")
        print(line)
    print("per-round mean steps, min..max ms: " +
          ", ".join(f"{k.split()[0]} {min(v) * 1e3:.2f}..{max(v) * 1e3:.2f}" for k, v in step_s.items()))
    print()
    print(f"pruning events ({len(events)}; target {args.target:g}, rate 0.5) for a {EPOCHS_REALISTIC}-epoch run on "
          f"{args.dataset_size:,} samples = {realistic_total:,} steps, one event every {period:,.0f} steps:")
    for e, s in zip(events, event_med):
        print(f"  step {e.step:>7,}: prune_to {e.n_pruned_after:>9,}  {s * 1e3:8.1f} ms")
    amort = mean_event / period
    print(f"  mean event {mean_event * 1e3:.1f} ms = {mean_event / bare:.0f} bare steps; amortized "
          f"{amort * 1e3:.4f} ms/step = {100 * amort / bare:.3f} % of a bare step")

    flip_cost = in_step["b  flip counting"]
    print(f"flip counting in-step: {100 * flip_cost:.1f} % of a bare step (criterion: at most 10 %); "
          f"numpy's three passes (b0) cost {in_step['b0 flip counting, numpy 3 passes'] / flip_cost:.2f}x as much")
    if args.profile or flip_cost > 0.10:
        print()
        print("profile of the per-step work of variant d's Pruner; isolated ms per step, median of 50, on copies of "
              "the live tensors:")
        for label, ms in profile_hook(pr_d, variants[f"d  Pruner + noise {args.noise:g}"][0].params, 50):
            print(f"  {label:56s} {ms:8.3f}")
    print()
    print(f"total benchmark time {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
