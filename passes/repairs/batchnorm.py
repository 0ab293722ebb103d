"""Inference BatchNormalization out of the training graph.

onnxruntime-training always trains BatchNormalization with batch statistics, and updates the running statistics
(FIELD-NOTES). Fine-tuning a post-training model on a few batches of (often random, unlabeled) data would then train
a different function and drag the statistics along. So every inference-mode BN becomes fixed arithmetic:

  y = s * (x - mean) + beta,   s = gamma / sqrt(var + eps)

- folded into the Conv/Gemm that feeds it (the usual eval-mode export does this already):
      W' = W * s (per output channel),  b' = (b - mean) * s + beta
- otherwise (e.g. pre-activation BN after a Concat) a per-channel Mul and Add with constant s and t = beta - mean*s,
  so the running statistics stay exactly what the user trained: honest and frozen.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..graph import attr
from ._edit import Editor, NodeRepair, Outcome, node_label


def _bn_params(ed: Editor, node: onnx.NodeProto):
    """(s, t) in float64 for an inference-mode BN with constant parameters, else None."""
    if attr(node, "training_mode", 0) or any(o and ed.uses(o) for o in node.output[1:]):
        return None
    vals = [ed.constant(x) for x in node.input[1:5]]
    if any(v is None for v in vals):
        return None
    gamma, beta, mean, var = (np.asarray(v, np.float64) for v in vals)
    s = gamma / np.sqrt(var + attr(node, "epsilon", 1e-5))
    return s, beta - mean * s


class FoldBatchNorm(NodeRepair):
    """BN right after a Conv/Gemm whose output nothing else reads, with weights used by that layer alone."""

    ops = frozenset({"BatchNormalization"})

    def rewrite_node(self, ed: Editor, node: onnx.NodeProto, out: Outcome) -> list[onnx.NodeProto] | None:
        params = _bn_params(ed, node)
        layer = ed.producer(node.input[0])
        if params is None or layer is None or not self._foldable(ed, layer, node):
            return None
        self._fold(ed, layer, *params)  # the layer and its initializers change in place; the BN goes
        layer.output[0] = node.output[0]
        out.changes.append(f"folded BatchNormalization {node_label(node)} into {layer.op_type} {node_label(layer)}")
        return []

    @staticmethod
    def _foldable(ed: Editor, layer: onnx.NodeProto, bn: onnx.NodeProto) -> bool:
        if layer.op_type not in ("Conv", "Gemm") or layer.output[0] in ed.outputs():
            return False
        if len(ed.uses(layer.output[0])) != 1:
            return False
        if layer.op_type == "Gemm" and (attr(layer, "alpha", 1.0) != 1.0 or attr(layer, "transA", 0) or
                                        attr(layer, "beta", 1.0) == 0.0):
            return False
        w = ed.array(layer.input[1])
        tensors = [x for x in layer.input[1:3] if x]
        if w is None or any(x in ed.fed() or len(ed.uses(x)) != 1 or ed.array(x) is None for x in tensors):
            return False
        bias = ed.array(layer.input[2]) if len(layer.input) > 2 and layer.input[2] else None
        channels = w.shape[0] if layer.op_type == "Conv" or attr(layer, "transB", 0) else w.shape[-1]
        return bias is None or bias.shape == (channels,)

    @staticmethod
    def _fold(ed: Editor, layer: onnx.NodeProto, s: np.ndarray, t: np.ndarray) -> None:
        inits = ed.inits()
        w = ed.array(layer.input[1]).astype(np.float64)
        axis = 0 if layer.op_type == "Conv" or attr(layer, "transB", 0) else w.ndim - 1
        shape = [1] * w.ndim
        shape[axis] = -1
        inits[layer.input[1]].CopyFrom(onnx.numpy_helper.from_array((w * s.reshape(shape)).astype(np.float32),
                                                                    layer.input[1]))
        has_bias = len(layer.input) > 2 and bool(layer.input[2])
        beta = attr(layer, "beta", 1.0) if layer.op_type == "Gemm" else 1.0
        b = ed.array(layer.input[2]).astype(np.float64) * beta if has_bias else np.zeros_like(s)
        new_b = ((b * s + t) / (beta if has_bias and beta else 1.0)).astype(np.float32)
        if has_bias:
            inits[layer.input[2]].CopyFrom(onnx.numpy_helper.from_array(new_b, layer.input[2]))
        else:
            del layer.input[2:]
            layer.input.append(ed.add_initializer(f"{layer.input[1]}_bias", new_b))
            if layer.op_type == "Gemm":
                for a in layer.attribute:
                    if a.name == "beta":
                        a.f = 1.0


class BatchNormToAffine(NodeRepair):
    """Any other inference-mode BN: x * s + t with constant per-channel s, t (running statistics frozen)."""

    ops = frozenset({"BatchNormalization"})

    def rewrite_node(self, ed: Editor, node: onnx.NodeProto, out: Outcome) -> list[onnx.NodeProto] | None:
        params = _bn_params(ed, node)
        dims = ed.shape(node.input[0])
        if params is None or dims is None:
            out.skipped.append(f"BatchNormalization {node_label(node)}: training mode, statistics fed at run "
                               "time, or input rank unknown")
            return None
        shape = [-1] + [1] * (len(dims) - 2)  # channels on axis 1, broadcast over the spatial axes
        base = node.output[0]
        cs, s_name = ed.const(f"{base}_scale", params[0].reshape(shape))
        ct, t_name = ed.const(f"{base}_shift", params[1].reshape(shape))
        mul, (scaled,) = ed.node("Mul", [node.input[0], s_name], base)
        add = onnx.helper.make_node("Add", [scaled, t_name], [node.output[0]], name=ed.fresh(f"{base}/Add"))
        out.changes.append(f"BatchNormalization {node_label(node)} -> per-channel Mul + Add (statistics frozen)")
        return [cs, ct, mul, add]
