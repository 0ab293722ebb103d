"""Pooling-like ops rewritten as convolutions with constant kernels.

AveragePool: onnxruntime-training 1.19.2 kills the process with SIGFPE on the first training step of a graph with
AveragePool on a gradient path (FIELD-NOTES; reproduced with torch's AvgPool2d). It is a depthwise convolution with
a constant kernel: y = Conv(x, K, group=C), K[c, 0, ...] = 1 / prod(kernel). Where padding is not counted
(count_include_pad=0) the border windows average fewer elements: there y = Conv(x, ones) / count, with the count of
real elements per output position computed here from the static spatial size.

LRN (no gradient builder): y = x / (bias + alpha/size * S)^beta, S[c] = sum of x^2 over channels
c - floor((size-1)/2) .. c + ceil((size-1)/2). S is a convolution along the channel axis: x^2 reshaped to
[N, 1, C, H*W] and convolved with a [size, 1] kernel of ones, padded like that window.
The kernels are Constant nodes, so no role-based picker mistakes them for weights to train or prune.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto

from ..graph import attr
from ._edit import Editor, NodeRepair, Outcome, node_label


def _window_counts(spatial, kernel, strides, pads) -> np.ndarray:
    """How many real (unpadded) input elements each output window covers, for one image."""
    rank = len(spatial)
    grids = []
    for d in range(rank):
        n_out = (spatial[d] + pads[d] + pads[d + rank] - kernel[d]) // strides[d] + 1
        starts = np.arange(n_out) * strides[d] - pads[d]
        grids.append(np.clip(starts + kernel[d], 0, spatial[d]) - np.clip(starts, 0, spatial[d]))
    counts = grids[0]
    for g in grids[1:]:
        counts = np.multiply.outer(counts, g)
    return counts.astype(np.float32)


class AveragePoolToConv(NodeRepair):
    ops = frozenset({"AveragePool"})

    def rewrite_node(self, ed: Editor, node: onnx.NodeProto, out: Outcome) -> list[onnx.NodeProto] | None:
        why = self._why_not(ed, node)
        if why:
            out.skipped.append(f"AveragePool {node_label(node)}: {why}")
            return None
        out.changes.append(f"AveragePool {node_label(node)} -> depthwise Conv with a constant kernel")
        return self._replace(ed, node)

    @staticmethod
    def _why_not(ed: Editor, node) -> str | None:
        dims = ed.shape(node.input[0])
        if ed.elem_type(node.input[0]) not in (0, TensorProto.FLOAT):
            return "not float32"
        if dims is None or dims[1] is None:
            return "channel count unknown"
        dilated = any(d != 1 for d in attr(node, "dilations", [1]))
        if attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID") or dilated:
            return "auto_pad SAME / dilations"
        kernel = attr(node, "kernel_shape")
        pads = attr(node, "pads", [0] * 2 * len(kernel))
        if attr(node, "ceil_mode", 0):
            spatial = dims[2:]
            if None in spatial:
                return "ceil_mode with unknown spatial size"
            strides = attr(node, "strides", [1] * len(kernel))
            for d, k in enumerate(kernel):
                span = spatial[d] + pads[d] + pads[d + len(kernel)] - k
                if span % strides[d]:  # ceil and floor differ: a partial window the Conv cannot express
                    return "ceil_mode adds partial windows"
        if any(pads) and not attr(node, "count_include_pad", 0) and None in dims[2:]:
            return "uncounted padding with unknown spatial size"
        return None

    @staticmethod
    def _replace(ed: Editor, node) -> list[onnx.NodeProto]:
        dims = ed.shape(node.input[0])
        kernel = list(attr(node, "kernel_shape"))
        strides = list(attr(node, "strides", [1] * len(kernel)))
        pads = list(attr(node, "pads", [0] * 2 * len(kernel)))
        channels, base = dims[1], node.output[0]
        uncounted = any(pads) and not attr(node, "count_include_pad", 0)
        scale = 1.0 if uncounted else 1.0 / math.prod(kernel)
        const, k_name = ed.const(f"{base}_kernel", np.full([channels, 1] + kernel, scale))
        conv_out = ed.fresh(f"{base}_sum") if uncounted else base
        conv = onnx.helper.make_node("Conv", [node.input[0], k_name], [conv_out], name=ed.fresh(f"{base}/Conv"),
                                     group=channels, kernel_shape=kernel, strides=strides, pads=pads)
        if not uncounted:
            return [const, conv]
        counts, c_name = ed.const(f"{base}_count", _window_counts(dims[2:], kernel, strides, pads))
        div = onnx.helper.make_node("Div", [conv_out, c_name], [base], name=ed.fresh(f"{base}/Div"))
        return [const, conv, counts, div]


class LRNToConv(NodeRepair):
    ops = frozenset({"LRN"})

    def rewrite_node(self, ed: Editor, node: onnx.NodeProto, out: Outcome) -> list[onnx.NodeProto] | None:
        dims = ed.shape(node.input[0])
        if ed.elem_type(node.input[0]) not in (0, TensorProto.FLOAT) or dims is None or len(dims) < 3:
            out.skipped.append(f"LRN {node_label(node)}: not float32 or rank unknown")
            return None
        out.changes.append(f"LRN {node_label(node)} -> channel-window Conv, Pow and Div")
        return self._replace(ed, node)

    @staticmethod
    def _replace(ed: Editor, node) -> list[onnx.NodeProto]:
        size = attr(node, "size")
        alpha, beta, bias = attr(node, "alpha", 1e-4), attr(node, "beta", 0.75), attr(node, "bias", 1.0)
        x, base, nodes = node.input[0], node.output[0], []

        def const(name, value, dtype=np.float32):
            c, n = ed.const(f"{base}_{name}", value, dtype)
            nodes.append(c)
            return n

        def op(kind, *inputs, out=None, **attrs):
            out = out or ed.fresh(f"{base}_{kind}")
            nodes.append(onnx.helper.make_node(kind, list(inputs), [out], name=ed.fresh(f"{base}/{kind}"), **attrs))
            return out

        square = op("Mul", x, x)
        # [N, C, ...] -> [N, 1, C, prod(...)]: Unsqueeze then Reshape with 0 = "copy that dim" (N and C)
        lifted = op("Unsqueeze", square, const("axis", [1], np.int64))
        flat = op("Reshape", lifted, const("shape", [0, 1, 0, -1], np.int64))
        lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
        window_kernel = const("window", np.ones((1, 1, size, 1)))
        summed = op("Conv", flat, window_kernel, kernel_shape=[size, 1], pads=[lo, 0, hi, 0])
        dims = ed.shape(x)
        back = const("back", [0] + dims[1:], np.int64) if dims and None not in dims[1:] else op("Shape", x)
        window = op("Reshape", summed, back)
        denom = op("Pow", op("Add", op("Mul", window, const("alpha", alpha / size)), const("bias", bias)),
                   const("beta", beta))
        op("Div", x, denom, out=base)
        return nodes
