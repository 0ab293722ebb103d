"""The numpy pruning core, without onnxruntime: exact counts, no resurrection, deterministic ties, flip counting."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnx_flipout.hooks import ParamView
from onnx_flipout.pruning.flips import FlipCounter
from onnx_flipout.pruning.masks import MaskSet
from onnx_flipout.pruning.criteria import CRITERIA, CriterionOptions, make_criterion
from onnx_flipout.pruning.nnrelief import NeuronInputs, NNReliefScore, relief_thresholds
from onnx_flipout.pruning.pruner import Probes, Pruner
from onnx_flipout.pruning.schedule import (
    CubicSchedule,
    GeometricSchedule,
    OneShotSchedule,
    PeriodicSchedule,
    PruneEvent,
)
from onnx_flipout.pruning.scores import FlipOutScore, MagnitudeScore, RandomScore, ScoreContext, SnipScore
from onnx_flipout.pruning.selection import (
    GlobalSelection,
    LayerwiseSelection,
    ThresholdSelection,
    layerwise_counts,
    prune_global,
)


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


def test_flip_counter_matches_a_naive_reference_across_folds_resync_and_resume():
    """Negative means w < 0: -0.0 and NaN are not negative, -inf is. Past two uint8 folds, with a resync and a
    state round trip (mid-fold, into a fresh counter) on the way; counts must equal a naive per-step comparison."""
    rng = np.random.default_rng(3)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -1e-45], dtype=np.float32)
    w = {"a": np.zeros((7, 9), np.float32), "b": np.zeros(5, np.float32)}

    def draw():
        for a in w.values():
            a[...] = np.where(rng.random(a.shape) < 0.2, rng.choice(specials, a.shape), rng.normal(size=a.shape))

    draw()
    fc = FlipCounter(w)
    ref = {n: np.zeros(a.shape, np.int64) for n, a in w.items()}
    prev = {n: a < 0 for n, a in w.items()}
    for step in range(1, 601):
        draw()
        w["b"][0] = (-1.0) ** step  # flips at every step: a uint8 accumulator must be folded in time
        fc.update(w)
        for n, a in w.items():
            ref[n] += (a < 0) != prev[n]
            prev[n] = a < 0
        if step == 300:  # resync: the current signs become the reference without counting
            w["a"][0] = 0.0
            fc.resync("a", w["a"])
            prev["a"] = w["a"] < 0
        if step == 400:
            fc2 = FlipCounter(w)
            fc2.load_state_dict(fc.state_dict())
            fc = fc2
    assert all(np.array_equal(fc.counts[n], ref[n]) for n in w)


def test_mask_zeroing_gives_positive_zero_and_touches_only_pruned():
    masks = MaskSet({"w": (4,)})
    masks.prune("w", np.array([1, 3]))
    w = np.array([-1.5, -2.0, np.inf, -0.5], dtype=np.float32)
    masks.zero({"w": w})
    assert w.tolist() == [-1.5, 0.0, np.inf, 0.0] and not np.signbit(w[[1, 3]]).any()
    w64 = np.array([1.0, 2.0, 3.0, 4.0])  # non-float32 path
    masks.zero({"w": w64})
    assert w64.tolist() == [1.0, 0.0, 3.0, 0.0]


# ------------------------------------------------------------------------------- criteria beside FlipOut (issue 3)


def _apply(selection, scores, masks, n_after):
    for name, idx in selection(scores, masks, n_after).items():
        masks.prune(name, idx)


def test_cubic_schedule_follows_zhu_gupta_and_ends_exactly():
    # T = 16: span = 12 steps, dt = 3, n = 4; s_j = 0.5 * (1 - (1 - j/4)^3)
    ev = CubicSchedule(0.5, max_events=4).events(total_steps=16, n_weights=1000)
    assert [e.step for e in ev] == [3, 6, 9, 12]
    assert [e.n_pruned_after for e in ev] == [round(289.0625), round(437.5), round(492.1875), 500]
    long = CubicSchedule(0.9961).events(total_steps=900, n_weights=50_200)
    assert len(long) <= 50 and long[-1].step <= 675 and long[-1].n_pruned_after == round(50_200 * 0.9961)
    counts = [e.n_pruned_after for e in long]
    assert counts == sorted(set(counts))  # strictly increasing: no empty events
    assert np.diff(counts)[0] > np.diff(counts)[-1]  # fast first, slow near the target


def test_cubic_schedule_needs_steps_and_handles_zero_target():
    assert CubicSchedule(0.0).events(10, 100) == []
    with pytest.raises(ValueError, match="training steps"):
        CubicSchedule(0.5).events(1, 100)


def test_one_shot_and_periodic_schedules():
    assert OneShotSchedule(0.9).events(100, 1001) == [PruneEvent(0, 901)]  # step 0: before the first step
    ev = PeriodicSchedule(3).events(100, 10)
    assert [e.step for e in ev] == [25, 50, 75] and all(e.n_pruned_after is None for e in ev)


def test_nnrelief_thresholds_hand_computed():
    # one neuron, importances 4, 3, 2, 1, no bias: total 10, shares before each = 0, .4, .7, .9
    a = relief_thresholds(np.array([[4.0, 3.0, 2.0, 1.0]]), None, out_axis=0)
    assert a.tolist() == [[0.0, 0.4, 0.7, 0.9]]
    # with a bias of 5 ranked first: total 15, before = 5, 9, 12, 14
    a = relief_thresholds(np.array([[4.0, 3.0, 2.0, 1.0]]), np.array([5.0]), out_axis=0)
    assert a.tolist() == [[5 / 15, 9 / 15, 12 / 15, 14 / 15]]
    # output units on axis 1 (MatMul layout [in, out]); a dead neuron (all zero) has nothing worth keeping
    a = relief_thresholds(np.array([[2.0, 0.0], [2.0, 0.0]]), None, out_axis=1)
    assert a.tolist() == [[0.0, 1.0], [0.5, 1.0]]


def _relief_ctx(w, input_abs, bias):
    return ScoreContext({"w": w}, layer_inputs={"w": NeuronInputs(input_abs, bias, 0)})


def test_nnrelief_alpha_keeps_smallest_set_reaching_alpha():
    # |x| carries the importance here: the weights are equal, so magnitude could not tell them apart
    w = np.array([[1.0, -1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    x_abs = np.array([[4.0, 3.0, 2.0, 1.0]])
    ctx = _relief_ctx(w, x_abs, np.array([0.0, 5.0]))
    scores = NNReliefScore()(ctx)
    masks = MaskSet({"w": w.shape})
    _apply(ThresholdSelection(-0.7), scores, masks, None)
    # neuron 0: 4 + 3 = 0.7 of 10 -> keep 2; neuron 1: bias 5 + 4 + 3 = 12 of 15 = 0.8 >= 0.7 -> keep 2 connections
    assert masks.keep["w"].tolist() == [[True, True, False, False], [True, True, False, False]]
    masks = MaskSet({"w": w.shape})
    _apply(ThresholdSelection(-0.75), scores, masks, None)
    assert masks.keep["w"].tolist() == [[True, True, True, False], [True, True, False, False]]


def test_nnrelief_target_count_is_the_bisection_limit():
    w = np.ones((2, 4))
    ctx = _relief_ctx(w, np.array([[4.0, 3.0, 2.0, 1.0]]), np.array([0.0, 5.0]))
    masks = MaskSet({"w": w.shape})
    # a: neuron 0 = 0, .4, .7, .9; neuron 1 = 1/3, .6, .8, .933: the three largest are .933, .9, .8
    _apply(GlobalSelection(), NNReliefScore()(ctx), masks, 3)
    assert masks.keep["w"].tolist() == [[True, True, True, False], [True, True, False, False]]
    # beyond any alpha: each neuron's top connection (a = 0) goes last, the one carrying less signal first
    scores = NNReliefScore()(_relief_ctx(np.array([[3.0, 1.0], [1.0, 1.0]]), np.ones((1, 2)), None))
    masks = MaskSet({"w": (2, 2)})
    _apply(GlobalSelection(), scores, masks, 3)
    assert masks.keep["w"].tolist() == [[True, False], [False, False]]


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 60), min_size=1, max_size=5), target=st.floats(0.0, 0.999),
       seed=st.integers(0, 10_000))
def test_layerwise_selection_exact_total_same_fraction_no_resurrection(sizes, target, seed):
    rng = np.random.default_rng(seed)
    weights = {f"t{i}": rng.normal(size=n) for i, n in enumerate(sizes)}
    masks = MaskSet({k: v.shape for k, v in weights.items()})
    total, before = masks.total, None
    for event in GeometricSchedule(target).events(total_steps=100, n_weights=total):
        _apply(LayerwiseSelection(), MagnitudeScore()(ScoreContext(weights)), masks, event.n_pruned_after)
        assert masks.n_pruned == event.n_pruned_after
        for k, frac in masks.tensor_sparsity().items():  # every tensor within 2 weights of the common fraction
            assert abs(frac * weights[k].size - event.n_pruned_after / total * weights[k].size) < 2
        if before is not None:
            assert all(np.all(masks.keep[k] <= before[k]) for k in before)
        before = masks.state()


def test_layerwise_counts_hand_example():
    assert layerwise_counts([10, 30], [0, 0], 20) == [5, 15]
    assert layerwise_counts([3, 3, 3], [0, 0, 0], 4) == [2, 1, 1]  # largest remainder, ties by position
    assert layerwise_counts([3, 3, 3], [2, 0, 0], 5) == [2, 2, 1]  # an earlier round-up is absorbed by the others
    with pytest.raises(ValueError):
        layerwise_counts([3], [2], 1)


def test_random_score_is_seeded():
    ctx = ScoreContext({"a": np.zeros((5, 7)), "b": np.zeros(11)})
    one, two, other = RandomScore(3), RandomScore(3), RandomScore(4)
    for _ in range(2):  # fresh draws per event, the same sequence for the same seed
        s1, s2, s3 = one(ctx), two(ctx), other(ctx)
        assert all(np.array_equal(s1[k], s2[k]) for k in s1) and not np.array_equal(s1["a"], s3["a"])


def test_snip_score_is_gradient_times_weight():
    ctx = ScoreContext({"w": np.array([2.0, -3.0, 0.5])}, gradients={"w": np.array([0.5, 1.0, -4.0])})
    assert SnipScore()(ctx)["w"].tolist() == [1.0, 3.0, 2.0]
    with pytest.raises(ValueError, match="gradients"):
        SnipScore()(ScoreContext({"w": np.ones(2)}))


def test_pruner_refuses_a_score_without_its_probe():
    with pytest.raises(ValueError, match="gradients probe"):
        Pruner(["w"], SnipScore(), OneShotSchedule(0.5))


def test_one_shot_prunes_before_the_first_step_from_probe_gradients():
    rng = np.random.default_rng(0)
    params = {"w": ParamView(rng.normal(size=(8, 8)).astype(np.float32), np.zeros((8, 8), np.float32))}
    grads = rng.normal(size=(8, 8))
    pruner = Pruner(["w"], SnipScore(), OneShotSchedule(0.75), probes=Probes(gradients=lambda: {"w": grads}))
    pruner.on_start(params, total_steps=10)
    assert pruner.masks.n_pruned == 48 and [e.step for e in pruner.log] == [0]
    kept = np.abs(grads * params["w"].data)[pruner.masks.keep["w"]]
    assert kept.min() >= np.abs(grads * params["w"].data)[~pruner.masks.keep["w"]].max()
    assert np.all(params["w"].data[~pruner.masks.keep["w"]] == 0)


@pytest.mark.parametrize("name", list(CRITERIA))
def test_every_criterion_hits_the_exact_target_in_simulation(name):
    rng = np.random.default_rng(1)
    shapes = {"w1": (20, 10), "w2": (10, 5)}
    params = {n: ParamView(rng.normal(size=s).astype(np.float32), np.zeros(s, np.float32)) for n, s in shapes.items()}
    probes = Probes(gradients=lambda: {n: rng.normal(size=s) for n, s in shapes.items()},
                    layer_inputs=lambda: {n: NeuronInputs(np.abs(rng.normal(size=(1, s[1]))), None, 0)
                                          for n, s in shapes.items()})
    c = make_criterion(name, CriterionOptions(sparsity=0.95, seed=2))
    pruner = Pruner(list(shapes), c.score, c.schedule, c.selection, probes=probes)
    _simulate(pruner, params, steps=60, rng=rng)
    assert pruner.result().sparsity == round(250 * 0.95) / 250
