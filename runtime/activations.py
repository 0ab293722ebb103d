"""Mean |input| of every prunable layer, measured by running the current model in onnxruntime: NNrelief's data.

The current weights are written into a copy of the model, the prunable nodes' input tensors become extra outputs,
and a few batches run through an InferenceSession. Because |x_i * w_ij| = |x_i| * |w_ij|, NNrelief's importance
E|x_i w_ij| needs from the data only E|x_i| for every connection's input:
- Gemm / MatMul: the mean over samples (and leading axes) of |x_i| for each input feature i (times |alpha| for Gemm);
- Conv: the mean over samples and output positions of |entry (c, u, v) of the unfolded input patch|, zero padding
  included (a padded entry adds nothing to the convolution, so it adds nothing to the importance either).
Per-op behaviour is the small table _STATS below, keyed by op type.
"""

from __future__ import annotations

import itertools
from typing import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_flipout.passes.graph import attr, consumers, model_input_names
from onnx_flipout.passes.prunable import WeightSlot
from onnx_flipout.pruning.nnrelief import NeuronInputs

from .session import make_session


def _gemm_stats(x: np.ndarray, node: onnx.NodeProto, w_shape) -> tuple[np.ndarray, int]:
    rows = x.T if attr(node, "transA", 0) else x  # [samples, features]
    s = np.abs(rows, dtype=np.float64).sum(axis=0) * abs(attr(node, "alpha", 1.0))
    return (s[None, :] if attr(node, "transB", 0) else s[:, None]), rows.shape[0]


def _matmul_stats(x: np.ndarray, node: onnx.NodeProto, w_shape) -> tuple[np.ndarray, int]:
    rows = x.reshape(-1, x.shape[-1])
    return np.abs(rows, dtype=np.float64).sum(axis=0)[:, None], rows.shape[0]


def conv_patch_abs_sum(x: np.ndarray, kernel, strides, dilations, pads) -> tuple[np.ndarray, int]:
    """Sum over samples and output positions of |unfolded patch entry| per (channel, *kernel offset); and the count.

    x: [N, C, *spatial]; pads: ONNX order (all begins, then all ends)."""
    nd = len(kernel)
    xp = np.pad(np.abs(x, dtype=np.float64), [(0, 0), (0, 0)] + [(pads[d], pads[nd + d]) for d in range(nd)])
    out = [(xp.shape[2 + d] - dilations[d] * (kernel[d] - 1) - 1) // strides[d] + 1 for d in range(nd)]
    sums = np.empty((x.shape[1], *kernel))
    for offset in itertools.product(*(range(k) for k in kernel)):
        window = tuple(slice(o * dl, o * dl + st * (n - 1) + 1, st)
                       for o, dl, st, n in zip(offset, dilations, strides, out))
        sums[(slice(None), *offset)] = xp[(slice(None), slice(None), *window)].sum(axis=(0, *range(2, 2 + nd)))
    return sums, x.shape[0] * int(np.prod(out))


def _conv_pads(node: onnx.NodeProto, spatial, kernel, strides, dilations) -> list[int]:
    nd = len(kernel)
    mode = attr(node, "auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "VALID":
        return [0] * (2 * nd)
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        total = [max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
                 for n, k, s, d in zip(spatial, kernel, strides, dilations)]
        small, big = [t // 2 for t in total], [t - t // 2 for t in total]
        return small + big if mode == "SAME_UPPER" else big + small
    return list(attr(node, "pads", [0] * (2 * nd)))


def _conv_stats(x: np.ndarray, node: onnx.NodeProto, w_shape) -> tuple[np.ndarray, int]:
    kernel = list(w_shape[2:])
    nd = len(kernel)
    strides, dilations = list(attr(node, "strides", [1] * nd)), list(attr(node, "dilations", [1] * nd))
    pads = _conv_pads(node, x.shape[2:], kernel, strides, dilations)
    sums, count = conv_patch_abs_sum(x, kernel, strides, dilations, pads)
    group, c_per_group = attr(node, "group", 1), w_shape[1]
    if group == 1:
        return sums[None], count
    per_out = w_shape[0] // group  # output channel o reads input channels of group o // per_out
    return np.stack([sums[(o // per_out) * c_per_group:(o // per_out + 1) * c_per_group]
                     for o in range(w_shape[0])]), count


_STATS = {"Gemm": _gemm_stats, "MatMul": _matmul_stats, "Conv": _conv_stats}


def _bias(model: onnx.ModelProto, node: onnx.NodeProto, n_out: int, uses) -> np.ndarray | None:
    """|bias| per output unit: Gemm C (times |beta|), Conv B, or the constant operand of an Add after a MatMul."""
    inits = {t.name: t for t in model.graph.initializer}
    scale, name = 1.0, None
    if node.op_type in ("Gemm", "Conv") and len(node.input) > 2 and node.input[2] in inits:
        name, scale = node.input[2], abs(attr(node, "beta", 1.0)) if node.op_type == "Gemm" else 1.0
    elif node.op_type == "MatMul":
        adds = [n for n, _ in uses.get(node.output[0], []) if n.op_type == "Add"]
        others = [i for n in adds[:1] for i in n.input if i != node.output[0]]
        name = others[0] if others and others[0] in inits else None
    if name is None:
        return None
    b = np.abs(numpy_helper.to_array(inits[name]).astype(np.float64)).reshape(-1) * scale
    if b.size not in (1, n_out):
        return None  # not one value per output unit (e.g. a per-sample Gemm C): no bias term
    return np.broadcast_to(b, (n_out,)).copy()


def layer_inputs(model: onnx.ModelProto, slots: list[WeightSlot], batches: Iterable[dict[str, np.ndarray]],
                 provider: str = "cpu") -> dict[str, NeuronInputs]:
    """NeuronInputs for every slot, from the model as given (write the current weights into it first)."""
    uses = consumers(model)
    fed = set(model_input_names(model))
    nodes = {s.name: [n for n, _ in uses[s.name]] for s in slots}
    wanted = sorted({n.input[0] for ns in nodes.values() for n in ns} - fed)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in wanted if t not in present)
    session = make_session(probe, provider)
    sums = {(s.name, i): 0.0 for s in slots for i in range(len(nodes[s.name]))}
    counts = dict.fromkeys(sums, 0)
    for feeds in batches:
        values = {**feeds, **dict(zip(wanted, session.run(wanted, {k: feeds[k] for k in fed})))}
        for s in slots:
            for i, node in enumerate(nodes[s.name]):
                add, n = _STATS[node.op_type](values[node.input[0]], node, s.shape)
                sums[s.name, i] = sums[s.name, i] + add
                counts[s.name, i] += n
    out = {}
    for s in slots:
        means = [sums[s.name, i] / max(counts[s.name, i], 1) for i in range(len(nodes[s.name]))]
        first = nodes[s.name][0]  # a weight shared by several nodes: average their inputs, use the first's bias
        out[s.name] = NeuronInputs(np.mean(means, axis=0), _bias(model, first, s.shape[s.out_axis], uses), s.out_axis)
    return out
