"""Static int8 QDQ quantization of MatMul / Gemm / Conv layers with prunable weights.

The pass writes QuantizeLinear / DequantizeLinear (QDQ) nodes around standard ops; onnxruntime's CPU graph
optimizer fuses each DQ -> op -> Q group into an int8 kernel (QLinearMatMul, QGemm, QLinearConv). Weight-only
DQ graphs are *not* fused and run ~75x slower than fp32 (FIELD-NOTES), so activations are always quantized too.

Formulas (r = s * (q - z)):
  weights, int8, symmetric, per output channel c along WeightSlot.out_axis:
      s_w[c] = max|W[c]| / 127,   q_w = clip(round(W / s_w[c]), -127, 127),   z_w = 0
      z_w = 0 keeps pruned weights exactly 0 (round(0) = 0, dequantized (0 - 0) * s = 0); an all-zero (pruned)
      channel gets the tensor-wide scale, so its bias keeps the same resolution as its neighbours'.
  activations, uint8, asymmetric, MinMax range [lo, hi] widened to include 0 (so 0 is exact):
      s_x = (hi - lo) / 255,   z_x = clip(round(-lo / s_x), 0, 255)
  Relu folding (as quantize_static does): when a quantized tensor (a layer's output; for MatMul, the output of
  the bias Add after it) feeds only a Relu, the Relu is removed and the tensor is quantized with the Relu
  output's range instead. That range is [0, hi], so z_x = 0 and the uint8 clamp at 0 *is* the Relu:
      Q(h; s, 0) = clip(round(h / s), 0, 255) = Q(Relu(h); s, 0)
  onnxruntime then fuses layer -> layer with no float DequantizeLinear -> QuantizeLinear rescale between them
  (MatMul keeps its float bias Add between DQ and Q; QLinearMatMul still fuses).
  biases (Gemm C, Conv B), int32, per channel:
      s_b[c] = s_x * s_w[c],   q_b = round(b / s_b[c]),   z_b = 0
      the int8 kernels accumulate sum(q_x * q_w) at scale s_x * s_w, so the bias adds to the accumulator as is.

Same conventions as onnxruntime.quantization.quantize_static(QDQ, per_channel=True, QUInt8 activations, QInt8
weights, MinMax), without its habit of raising the model's opset.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_flipout.errors import ConfigError

from .base import Pass, PassResult
from .graph import NameFactory, consumers, graph_input_names, initializers, opset_version, producers
from .prunable import find_prunable_weights

_OPS = ("MatMul", "Gemm", "Conv")
_MIN_OPSET = 13  # DequantizeLinear gained the per-channel `axis` attribute in opset 13
_INT32 = np.iinfo(np.int32)


def quantizable_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """MatMul / Gemm / Conv nodes whose input 1 is a prunable weight."""
    weights = {s.name for s in find_prunable_weights(model)}
    return [n for n in model.graph.node if n.op_type in _OPS and len(n.input) > 1 and n.input[1] in weights]


def relu_folds(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """{pre-Relu tensor: Relu node} for the Relus that quantization removes (see the module docstring).

    The pre-Relu tensor is output 0 of a quantizable node, or for MatMul the output of the Add(bias initializer)
    that alone consumes it; it must not be a graph output, and a single Relu must be its only consumer.
    """
    uses, inits = consumers(model), initializers(model)
    outputs = {o.name for o in model.graph.output}
    folds = {}
    for node in quantizable_nodes(model):
        t = node.output[0]
        if node.op_type == "MatMul" and t not in outputs and len(uses[t]) == 1:
            add, _ = uses[t][0]
            if add.op_type == "Add" and len(add.input) == 2 and any(i in inits for i in add.input if i != t):
                t = add.output[0]
        if t in outputs or len(uses[t]) != 1:
            continue
        relu, _ = uses[t][0]
        if relu.op_type == "Relu" and relu.domain in ("", "ai.onnx"):
            folds[t] = relu
    return folds


def activation_tensors(model: onnx.ModelProto) -> list[str]:
    """Float tensors that need a calibration range: input 0 and output 0 of every quantizable node.

    Where a Relu is folded (relu_folds), its output stands in for its input: calibrate the fp32 model.
    """
    inits, folds = initializers(model), relu_folds(model)
    names = [t for n in quantizable_nodes(model) for t in (n.input[0], n.output[0])] + list(folds)
    names = [folds[t].output[0] if t in folds else t for t in names]
    return list(dict.fromkeys(t for t in names if t not in inits))


def activation_qparams(name: str, lo: float, hi: float) -> tuple[np.float32, np.uint8]:
    """uint8 asymmetric scale and zero point for the range [lo, hi] of tensor `name`."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ConfigError(f"calibration range of tensor {name!r} is not finite: ({lo}, {hi})")
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / 255.0
    if scale < np.finfo(np.float32).tiny:  # a tensor that is always 0: any positive scale is exact
        return np.float32(1.0), np.uint8(0)
    return np.float32(scale), np.uint8(np.clip(np.round(-lo / scale), 0, 255))


def quantize_weight(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 symmetric per-channel weights along `axis` and their float32 scales."""
    absmax = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1).astype(np.float64)
    fallback = absmax.max() / 127.0 if absmax.max() > 0 else 1.0
    scale = np.where(absmax > 0, absmax / 127.0, fallback).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def quantize_bias(b: np.ndarray, x_scale: np.float32, w_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 bias at the accumulator scale s_x * s_w[c], and that scale."""
    scale = (np.float32(x_scale) * w_scale).astype(np.float32)
    q = np.clip(np.round(b.astype(np.float64) / scale), _INT32.min, _INT32.max).astype(np.int32)
    return q, scale


class _Emitter:
    """Fresh names plus the initializers and nodes a rewrite adds."""

    def __init__(self, model: onnx.ModelProto):
        self.fresh = NameFactory(model)
        self.inits: list[onnx.TensorProto] = []

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [output], name=self.fresh(f"{output}_{op}"), **attrs)

    def dequantize(self, base: str, q: np.ndarray, scale, zero, output: str, **attrs) -> onnx.NodeProto:
        """DequantizeLinear of a constant: new initializers for q, scale, zero point; the DQ writes `output`."""
        inputs = [self.const(f"{base}_quantized", q), self.const(f"{base}_scale", scale)]
        return self.node("DequantizeLinear", inputs + [self.const(f"{base}_zero_point", zero)], output, **attrs)


class InsertQDQ(Pass):
    """Quantize weights, biases and activations of every quantizable node, given calibrated activation ranges."""

    def __init__(self, ranges: dict[str, tuple[float, float]]):
        self.ranges = dict(ranges)

    def call(self, model: onnx.ModelProto) -> PassResult:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        nodes = quantizable_nodes(out)
        if not nodes:
            return PassResult(out, False)
        _check_opset(out)
        acts = activation_tensors(out)
        missing = [t for t in acts if t not in self.ranges]
        if missing:
            raise ConfigError(
                f"no calibration range for tensor(s) {', '.join(map(repr, missing))}: "
                "calibrate every tensor that activation_tensors(model) lists"
            )
        folds = relu_folds(out)
        relu_outputs = {r.output[0] for r in folds.values()}
        ranges = {t: (max(lo, 0.0), hi) if t in relu_outputs else (lo, hi) for t, (lo, hi) in self.ranges.items()}
        qparams = {t: activation_qparams(t, *ranges[t]) for t in acts}  # Relu outputs: zero point 0, whatever given
        emit = _Emitter(out)
        head, w_scales, dropped = _quantize_weights(out, emit)
        head_b, dropped_b = _quantize_biases(out, emit, nodes, qparams, w_scales)
        head_a, after = _quantize_activations(out, emit, qparams, {r.output[0]: t for t, r in folds.items()})
        _rebuild(out.graph, head + head_b + head_a, after, dropped | dropped_b, emit.inits, relu_outputs)
        return PassResult(out, True)


def _check_opset(model: onnx.ModelProto) -> None:
    version = opset_version(model) or 0
    if version < _MIN_OPSET:
        raise ConfigError(
            f"int8 QDQ quantization needs ai.onnx opset >= {_MIN_OPSET} (per-channel DequantizeLinear), "
            f"but this model uses opset {version}; use --quantize none, or re-export the model at opset >= {_MIN_OPSET}"
        )


def _quantize_weights(model, emit):
    """Each prunable weight becomes DQ(int8) writing the weight's old name, so its consumers stay unchanged."""
    inits = initializers(model)
    head, scales = [], {}
    for slot in find_prunable_weights(model):
        q, scale = quantize_weight(numpy_helper.to_array(inits[slot.name]), slot.out_axis)
        zero = np.zeros_like(scale, dtype=np.int8)
        head.append(emit.dequantize(slot.name, q, scale, zero, slot.name, axis=slot.out_axis))
        scales[slot.name] = scale
    return head, scales, set(scales)


def _quantize_biases(model, emit, nodes, qparams, w_scales):
    """Gemm C / Conv B as DQ(int32). Left in float when shared, fed at run time, or not one value per channel."""
    inits, uses, fed = initializers(model), consumers(model), graph_input_names(model)
    head, dropped = [], set()
    for node in nodes:
        name = node.input[2] if node.op_type in ("Gemm", "Conv") and len(node.input) > 2 else ""
        tensor, w_scale = inits.get(name), w_scales[node.input[1]]
        if tensor is None or name in fed or len(uses[name]) != 1 or tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        if tuple(tensor.dims) != w_scale.shape:
            continue
        q, scale = quantize_bias(numpy_helper.to_array(tensor), qparams[node.input[0]][0], w_scale)
        head.append(emit.dequantize(name, q, scale, np.zeros_like(q), name, axis=0))
        dropped.add(name)
    return head, dropped


def _quantize_activations(model, emit, qparams, folded):
    """One Q -> DQ pair per tensor, shared by all its consumers, placed right after its producer.

    folded maps a removed Relu's output to its input: the pair quantizes the input and its DQ writes the output.
    """
    made_by = {out: i for i, n in enumerate(model.graph.node) for out in n.output}
    outputs = {o.name for o in model.graph.output}
    rename = {}  # consumer rewiring: tensor -> its dequantized copy
    head, after = [], {}
    for t, (scale, zero) in qparams.items():
        s, z = emit.const(f"{t}_scale", scale), emit.const(f"{t}_zero_point", zero)
        producer = made_by.get(folded.get(t, t))
        if t in folded:  # the Relu goes; its consumers read the DQ, which writes the Relu's output name
            src, dst = folded[t], t
        elif t in outputs and producer is not None:  # graph outputs keep their names: the producer writes anew
            src, dst = emit.fresh(f"{t}_float"), t
            node = model.graph.node[producer]
            node.output[list(node.output).index(t)] = src
        else:
            src, dst = t, emit.fresh(f"{t}_dequantized")
            rename[t] = dst
        q = emit.fresh(f"{t}_quantized")
        pair = [emit.node("QuantizeLinear", [src, s, z], q), emit.node("DequantizeLinear", [q, s, z], dst)]
        (after.setdefault(producer, []) if producer is not None else head).extend(pair)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
    return head, after


def _rebuild(graph, head, after, dropped, new_inits, removed) -> None:
    """Constants and input QDQ first, each activation pair right after its producer: order stays topological.

    The nodes that wrote the tensors in `removed` (folded Relus; a DQ in `after` writes them now) leave the graph.
    """
    order = list(head)
    for i, node in enumerate(graph.node):
        order += ([] if node.output[0] in removed else [_copy(node)]) + after.get(i, [])
    kept = [_copy(t) for t in graph.initializer if t.name not in dropped]  # copies survive the clearing below
    del graph.node[:]
    graph.node.extend(order)
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)


def _copy(message):
    clone = type(message)()
    clone.CopyFrom(message)
    return clone
