"""NNrelief: prune the incoming connections that carry little of each neuron's input signal.

Reference: Dekhovich, Tax, Sluiter, Bessa, "Neural network relief: a pruning algorithm based on neural activity"
(arXiv 2109.10795, 2021).

For an output neuron j with inputs x_i, weights w_ij and bias b_j, the importance of connection i is its mean
contribution over data, s_ij = E_x |x_i * w_ij|, and the bias is one more term, s_bj = |b_j|. Normalised by the
neuron's total S_j = sum_i s_ij + s_bj, the rule keeps the smallest set of terms (largest first) whose normalised
importance reaches alpha, and prunes the other connections. For a Conv the neuron is an output channel (one kernel
slice) and its inputs are the entries (c, u, v) of the unfolded input patch, averaged over output positions as well.
The bias counts in the total and the ranking but is never pruned: this project prunes weights only.

Closed form used here: sort a neuron's terms by importance, descending (ties by position, the bias last), and let
    a_ij = (sum of the terms ranked before connection i) / S_j.
Connection i is kept iff a_ij < alpha, so the number pruned at a given alpha is #{a_ij >= alpha}: a step function of
alpha whose jumps are exactly the a_ij. Bisecting alpha to hit a target count converges between two of these
values; taking the n alive connections with the largest a_ij is that bisection's limit, exact, with ties broken by
position. The score is -a_ij (higher = more important), so the generic global selection does the bisection's job,
and the alpha of an event is minus the highest score it pruned.

Beyond the rule: every alpha > 0 keeps each neuron's top connection (a_ij = 0), so a target that leaves fewer
connections than neurons cannot be met by any alpha. Those top connections score e / (1 + e) > 0 instead of -0,
with e = E|x_i w_ij| their absolute importance: they still rank after every other connection (the alpha rule is
untouched), and among themselves the one carrying the least signal goes first, rather than the first by position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scores import LAYER_INPUTS, Score, ScoreContext, _required


@dataclass(frozen=True)
class NeuronInputs:
    """What NNrelief needs about one prunable tensor besides its weights, measured by running the model on data."""

    input_abs: np.ndarray  # E|x_i| per connection, arranged to broadcast against the weight tensor
    bias_abs: np.ndarray | None  # |b_j| per output unit (neuron or channel); None when the layer has no bias
    out_axis: int  # the weight axis that indexes output units


def relief_thresholds(importance: np.ndarray, bias_abs: np.ndarray | None, out_axis: int) -> np.ndarray:
    """a_ij for every connection: the share of its neuron's importance ranked before it (shape of `importance`).

    A neuron whose terms are all zero gets a_ij = 1: nothing it computes depends on its inputs."""
    rows = np.moveaxis(np.asarray(importance, dtype=np.float64), out_axis, 0)
    shape = rows.shape
    flat = rows.reshape(shape[0], -1)
    bias = np.zeros((shape[0], 1)) if bias_abs is None else np.abs(np.asarray(bias_abs, np.float64)).reshape(-1, 1)
    terms = np.concatenate([flat, bias], axis=1)
    order = np.argsort(-terms, axis=1, kind="stable")
    ranked = np.take_along_axis(terms, order, axis=1)
    cums = np.cumsum(ranked, axis=1)
    # the sum before each term, taken from the running sum itself (not cums - ranked) so that every term after the
    # last nonzero one gets exactly total / total = 1
    before = np.concatenate([np.zeros((shape[0], 1)), cums[:, :-1]], axis=1)
    total = cums[:, -1:]
    a_ranked = np.divide(before, total, out=np.ones_like(before), where=total > 0)
    a = np.empty_like(terms)
    np.put_along_axis(a, order, a_ranked, axis=1)
    return np.moveaxis(a[:, :-1].reshape(shape), 0, out_axis)


class NNReliefScore(Score):
    """-a_ij from relief_thresholds, with importance |w_ij| * E|x_i| (= E|x_i * w_ij|)."""

    name = "nnrelief"
    needs = frozenset({LAYER_INPUTS})

    def __call__(self, ctx: ScoreContext) -> dict[str, np.ndarray]:
        inputs = _required(ctx, "layer_inputs", "NNrelief")
        out = {}
        for name, w in ctx.weights.items():
            li: NeuronInputs = inputs[name]
            importance = np.abs(w, dtype=np.float64) * li.input_abs
            a = relief_thresholds(importance, li.bias_abs, li.out_axis)
            out[name] = np.where(a == 0.0, importance / (1.0 + importance), -a)
        return out
