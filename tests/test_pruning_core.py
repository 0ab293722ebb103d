"""The numpy pruning core, without onnxruntime: exact counts, no resurrection, deterministic ties, flip counting."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnx_flipout.hooks import ParamView
from onnx_flipout.pruning.flips import FlipCounter
from onnx_flipout.pruning.masks import MaskSet
from onnx_flipout.pruning.pruner import Pruner
from onnx_flipout.pruning.schedule import GeometricSchedule
from onnx_flipout.pruning.scores import FlipOutScore, MagnitudeScore, ScoreContext
from onnx_flipout.pruning.selection import prune_global


def test_flip_counter_counts_sign_changes_against_previous_step():
    w = np.array([1.0, -1.0, 2.0, 0.0], dtype=np.float32)
    fc = FlipCounter({"w": w})
    for new in ([-1.0, -1.0, 2.0, 0.0], [1.0, 1.0, 2.0, 0.0], [1.0, 1.0, -2.0, 0.0]):
        w[:] = new
        fc.update({"w": w})
    assert fc.counts["w"].tolist() == [2, 1, 1, 0]


def test_flip_counter_resync_does_not_count_pruning_as_a_flip():
    w = np.array([-1.0, 2.0], dtype=np.float32)
    fc = FlipCounter({"w": w})
    w[0] = 0.0  # pruned: -1 -> 0 is not a sign flip caused by training
    fc.resync("w", w)
    fc.update({"w": w})
    assert fc.counts["w"].tolist() == [0, 0]


def test_flipout_score_is_magnitude_power_over_flips_plus_one():
    w = {"a": np.array([2.0, -3.0])}
    flips = {"a": np.array([0, 2])}
    s = FlipOutScore(p=2)(ScoreContext(w, flips))["a"]
    assert s.tolist() == [4.0, 3.0]


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    target=st.floats(0.0, 0.999),
    seed=st.integers(0, 10_000),
)
def test_global_selection_hits_exact_count_and_never_resurrects(sizes, target, seed):
    rng = np.random.default_rng(seed)
    weights = {f"t{i}": rng.normal(size=n) for i, n in enumerate(sizes)}
    masks = MaskSet({k: v.shape for k, v in weights.items()})
    total = masks.total
    before = None
    for level in GeometricSchedule(target).sparsities() if target > 0 else []:
        goal = round(total * level)
        chosen = prune_global(MagnitudeScore()(ScoreContext(weights)), masks, goal - masks.n_pruned)
        for k, idx in chosen.items():
            masks.prune(k, idx)
        assert masks.n_pruned == goal
        if before is not None:  # pruned stays pruned
            assert all(np.all(masks.keep[k] <= before[k]) for k in before)
        before = masks.state()
    assert masks.n_pruned == (round(total * target) if target > 0 else 0)


def test_selection_prunes_lowest_scores_and_breaks_ties_by_position():
    masks = MaskSet({"a": (3,), "b": (3,)})
    scores = {"a": np.array([1.0, 0.5, 0.5]), "b": np.array([0.5, 2.0, 0.1])}
    chosen = prune_global(scores, masks, 3)  # 0.1, then the first two of the three tied 0.5s by position
    assert chosen["b"].tolist() == [2] and chosen["a"].tolist() == [1, 2]


def test_selection_refuses_more_than_remaining():
    masks = MaskSet({"a": (2,)})
    with pytest.raises(ValueError):
        prune_global({"a": np.zeros(2)}, masks, 3)


@pytest.mark.parametrize("target,events", [(0.5, 1), (0.9, 4), (0.99, 7), (0.996, 8), (0.0, 0)])
def test_geometric_schedule_event_count_and_final_level(target, events):
    levels = GeometricSchedule(target).sparsities()
    assert len(levels) == events
    if events:
        assert levels[-1] == target and levels == sorted(levels)
        assert levels[:-1] == [1 - 0.5**i for i in range(1, events)]


def test_schedule_spreads_events_and_leaves_recovery_time():
    ev = GeometricSchedule(0.9).events(total_steps=100, n_weights=1000)
    assert [e.step for e in ev] == [20, 40, 60, 80]
    assert ev[-1].n_pruned_after == 900


def test_schedule_needs_enough_steps():
    with pytest.raises(ValueError, match="training steps"):
        GeometricSchedule(0.99).events(total_steps=5, n_weights=100)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_schedule_rejects_bad_target(bad):
    with pytest.raises(ValueError):
        GeometricSchedule(bad)


def _simulate(pruner, params, steps, rng):
    pruner.on_start(params, steps)
    for step in range(1, steps + 1):
        for p in params.values():
            p.grad[...] = rng.normal(size=p.grad.shape)
        pruner.before_step(step, params)
        for name in pruner.names:  # pruned gradients must already be zero
            assert np.all(params[name].grad[~pruner.masks.keep[name]] == 0)
        for p in params.values():  # a momentum-like update that would move pruned weights if not re-masked
            p.data -= 0.1 * p.grad + 0.01
        pruner.after_step(step, params)
        for name in pruner.names:
            assert np.all(params[name].data[~pruner.masks.keep[name]] == 0)


def test_pruner_reaches_target_and_keeps_pruned_weights_zero():
    rng = np.random.default_rng(0)
    params = {n: ParamView(rng.normal(size=s).astype(np.float32), np.zeros(s, np.float32))
              for n, s in {"w1": (20, 10), "w2": (10, 5)}.items()}
    pruner = Pruner(["w1", "w2"], FlipOutScore(), GeometricSchedule(0.9), noise=0.5, seed=1)
    _simulate(pruner, params, steps=50, rng=rng)
    result = pruner.result()
    assert result.sparsity == pytest.approx(round(250 * 0.9) / 250)
    assert [e.step for e in result.events] == [10, 20, 30, 40]
    assert sum(int(c.sum()) for c in result.flips.values()) > 0


def test_flip_counts_survive_uint8_folding():
    w = np.array([1.0, -1.0], dtype=np.float32)
    fc = FlipCounter({"w": w})
    for _ in range(600):  # more than 255 flips: a uint8 accumulator must have been folded
        w *= -1
        fc.update({"w": w})
    assert fc.counts["w"].tolist() == [600, 600]


def test_mask_zeroing_gives_positive_zero_and_touches_only_pruned():
    masks = MaskSet({"w": (4,)})
    masks.prune("w", np.array([1, 3]))
    w = np.array([-1.5, -2.0, np.inf, -0.5], dtype=np.float32)
    masks.zero({"w": w})
    assert w.tolist() == [-1.5, 0.0, np.inf, 0.0] and not np.signbit(w[[1, 3]]).any()
    w64 = np.array([1.0, 2.0, 3.0, 4.0])  # non-float32 path
    masks.zero({"w": w64})
    assert w64.tolist() == [1.0, 0.0, 3.0, 0.0]
