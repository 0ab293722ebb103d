"""Gradient-less element-wise ops rewritten as exact compositions of ops that have gradients in 1.19.2.

One table keyed by op type; each entry builds the replacement from Relu, Min, Exp, Log, Abs, Clip, Mul, Add, Div,
Tanh, Where, Greater (all differentiable there). Formulas (x the input, defaults from the ONNX spec):
  HardSigmoid(a=0.2, b=0.5) = Clip(a*x + b, 0, 1)          HardSwish = x * HardSigmoid(a=1/6, b=0.5)
  Softplus = Relu(x) + Log(1 + Exp(-|x|))   (the stable form: no overflow for large x)
  Elu(a=1) = Relu(x) + a*(Exp(Min(x, 0)) - 1)              Selu(a, g) = g * Elu(a)
  Celu(a=1) = Relu(x) + a*(Exp(Min(x, 0)/a) - 1)           PRelu(x, s) = Relu(x) + s*Min(x, 0)
  Mish = x * Tanh(Softplus(x))                             Softsign = x / (1 + |x|)
  ThresholdedRelu(a=1) = Where(x > a, x, 0)
  Sum(a, b, ...) = a + b + ...                             Mean(a, b, ...) = (a + b + ...) / n
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from ..graph import attr
from ._edit import Editor, NodeRepair, Outcome, node_label


class _Builder:
    """Emits the nodes of one replacement; the last node writes the original output name."""

    def __init__(self, ed: Editor, node: onnx.NodeProto):
        self.ed, self.base, self.nodes = ed, node.output[0], []

    def c(self, value) -> str:
        const, name = self.ed.const(f"{self.base}_c", value)
        self.nodes.append(const)
        return name

    def op(self, op: str, *inputs: str) -> str:
        node, (out,) = self.ed.node(op, list(inputs), self.base)
        self.nodes.append(node)
        return out

    def finish(self, node: onnx.NodeProto, last: str) -> list[onnx.NodeProto]:
        """Rename the last tensor to the original output, so consumers and graph outputs stay untouched."""
        for n in self.nodes:
            for i, x in enumerate(n.output):
                if x == last:
                    n.output[i] = node.output[0]
        return self.nodes


def _softplus(b: _Builder, x: str) -> str:
    tail = b.op("Log", b.op("Add", b.op("Exp", b.op("Neg", b.op("Abs", x))), b.c(1.0)))
    return b.op("Add", b.op("Relu", x), tail)


def _elu_core(b: _Builder, x: str, alpha: float, inner_scale: float = 1.0) -> str:
    neg = b.op("Min", x, b.c(0.0))
    if inner_scale != 1.0:
        neg = b.op("Div", neg, b.c(inner_scale))
    return b.op("Add", b.op("Relu", x), b.op("Mul", b.c(alpha), b.op("Sub", b.op("Exp", neg), b.c(1.0))))


def _hard_sigmoid(b: _Builder, x: str, alpha: float, beta: float) -> str:
    return b.op("Clip", b.op("Add", b.op("Mul", x, b.c(alpha)), b.c(beta)), b.c(0.0), b.c(1.0))


REWRITES = {
    "HardSigmoid": lambda b, n: _hard_sigmoid(b, n.input[0], attr(n, "alpha", 0.2), attr(n, "beta", 0.5)),
    "HardSwish": lambda b, n: b.op("Mul", n.input[0], _hard_sigmoid(b, n.input[0], 1.0 / 6.0, 0.5)),
    "Softplus": lambda b, n: _softplus(b, n.input[0]),
    "Elu": lambda b, n: _elu_core(b, n.input[0], attr(n, "alpha", 1.0)),
    "Selu": lambda b, n: b.op("Mul", b.c(attr(n, "gamma", 1.0507009873554805)),
                              _elu_core(b, n.input[0], attr(n, "alpha", 1.6732632423543772))),
    "Celu": lambda b, n: _elu_core(b, n.input[0], attr(n, "alpha", 1.0), attr(n, "alpha", 1.0)),
    "PRelu": lambda b, n: b.op("Add", b.op("Relu", n.input[0]), b.op("Mul", n.input[1], b.op("Min", n.input[0],
                                                                                             b.c(0.0)))),
    "Mish": lambda b, n: b.op("Mul", n.input[0], b.op("Tanh", _softplus(b, n.input[0]))),
    "Softsign": lambda b, n: b.op("Div", n.input[0], b.op("Add", b.op("Abs", n.input[0]), b.c(1.0))),
    "ThresholdedRelu": lambda b, n: b.op("Where", b.op("Greater", n.input[0], b.c(attr(n, "alpha", 1.0))),
                                         n.input[0], b.c(0.0)),
}


def _onnx_domain(node: onnx.NodeProto) -> bool:
    """A custom domain's op of the same name need not compute the same thing."""
    return node.domain in ("", "ai.onnx")


class DifferentiableActivations(NodeRepair):
    """Rewrite the float32 activations in REWRITES (no gradient in onnxruntime-training 1.19.2)."""

    def __init__(self, ops=tuple(REWRITES)):
        self.ops = frozenset(ops)

    def rewrite_node(self, ed: Editor, node: onnx.NodeProto, out: Outcome) -> list[onnx.NodeProto] | None:
        if not _onnx_domain(node):
            return None
        if ed.elem_type(node.input[0]) not in (0, TensorProto.FLOAT):  # constants here are float32
            out.skipped.append(f"{node.op_type} {node_label(node)}: not float32")
            return None
        b = _Builder(ed, node)
        out.changes.append(f"{node.op_type} {node_label(node)} -> differentiable ops")
        return b.finish(node, REWRITES[node.op_type](b, node))


class VariadicToAdd(NodeRepair):
    """Sum / Mean of several tensors (no gradient) -> a chain of Add (and a Div by n for Mean)."""

    ops = frozenset({"Sum", "Mean"})

    def rewrite_node(self, ed: Editor, node: onnx.NodeProto, out: Outcome) -> list[onnx.NodeProto] | None:
        if not _onnx_domain(node):
            return None
        if node.op_type == "Mean" and ed.elem_type(node.input[0]) not in (0, TensorProto.FLOAT):
            return None
        b = _Builder(ed, node)
        acc = node.input[0] if len(node.input) > 1 else b.op("Identity", node.input[0])
        for x in node.input[1:]:
            acc = b.op("Add", acc, x)
        if node.op_type == "Mean" and len(node.input) > 1:
            acc = b.op("Div", acc, b.c(np.float32(len(node.input))))
        out.changes.append(f"{node.op_type} {node_label(node)} of {len(node.input)} inputs -> Add chain")
        return b.finish(node, acc)
