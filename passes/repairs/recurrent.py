"""ONNX LSTM / GRU unrolled over a static sequence length into MatMul, Sigmoid, Tanh, Mul and Add.

onnxruntime-training 1.19.2 registers gradients for LSTM/GRU that expect com.microsoft's LSTMTraining/GRUTraining
outputs (all hidden states and gates); the ONNX ops exporters write fail to build (measured). Unrolled, the
weights also become ordinary parameters: W^T [I, G*H] in one MatMul over all steps, R^T [H, G*H] in one MatMul per
step (every use a weight slot, so they are trained, pruned and quantized like any Linear), the input bias in an Add
after the first MatMul.

ONNX equations (forward direction, default activations, layout 0, no peepholes, no clip):
  LSTM gates iofc:  g = x_t W^T + h R^T + Wb + Rb;  i, o, f = sigmoid(.), c~ = tanh(.)
                    c = f * c + i * c~,  h = o * tanh(c)
  GRU gates zrh, linear_before_reset=1 (what torch writes):
                    z = sigmoid(x Wz^T + h Rz^T + Wbz + Rbz),  r = sigmoid(x Wr^T + h Rr^T + Wbr + Rbr)
                    n = tanh(x Wh^T + Wbh + r * (h Rh^T + Rbh)),  h = (1 - z) * n + z * h = n + z * (h - n)
"""

from __future__ import annotations

import numpy as np
import onnx

from ..graph import attr
from ._edit import Editor, NodeRepair, Outcome, node_label

_GATES = {"LSTM": 4, "GRU": 3}


class UnrollRecurrent(NodeRepair):
    ops = frozenset(_GATES)

    def rewrite(self, ed: Editor, out: Outcome) -> None:
        weights = {x for n in ed.graph.node if n.op_type in _GATES for x in n.input[1:4]} & set(ed.inits())
        super().rewrite(ed, out)
        # the original [1, G*H, ...] tensors of the unrolled nodes, now unread (a skipped node still reads its own)
        ed.drop_unused_initializers(weights)

    def rewrite_node(self, ed: Editor, node: onnx.NodeProto, out: Outcome) -> list[onnx.NodeProto] | None:
        why = self._why_not(ed, node)
        if why:
            out.skipped.append(f"{node.op_type} {node_label(node)}: {why}")
            return None
        steps = ed.shape(node.input[0])[0]
        out.changes.append(f"{node.op_type} {node_label(node)} unrolled over {steps} steps")
        return _Unroller(ed, node).build(steps)

    @staticmethod
    def _why_not(ed: Editor, node) -> str | None:
        dims = ed.shape(node.input[0])
        if dims is None or dims[0] is None:
            return "sequence length is not static"
        if attr(node, "direction", b"forward") != b"forward" or attr(node, "layout", 0):
            return "only forward direction, layout 0"
        if attr(node, "activations") or attr(node, "clip") is not None or attr(node, "input_forget", 0):
            return "custom activations, clip or input_forget"
        if node.op_type == "GRU" and not attr(node, "linear_before_reset", 0):
            return "GRU with linear_before_reset=0"
        optional = list(node.input[4:5]) + (list(node.input[7:8]) if node.op_type == "LSTM" else [])
        if any(optional):
            return "sequence_lens or peepholes given"
        if any(ed.constant(x) is None for x in node.input[1:4] if x):
            return "weights are not constant"
        return None


class _Unroller:
    def __init__(self, ed: Editor, node: onnx.NodeProto):
        self.ed, self.node, self.nodes = ed, node, []
        self.base = node.name or node.output[0]
        self.kind, self.hidden = node.op_type, attr(node, "hidden_size")

    def op(self, kind, *inputs, out=None, n_out=1, **attrs) -> str | list[str]:
        outs = [out] if out else [self.ed.fresh(f"{self.base}_{kind}") for _ in range(n_out)]
        self.nodes.append(onnx.helper.make_node(kind, list(inputs), outs, name=self.ed.fresh(f"{self.base}/{kind}"),
                                                **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value, dtype=np.float32) -> str:
        node, name = self.ed.const(f"{self.base}_c", value, dtype)
        self.nodes.append(node)
        return name

    def build(self, steps: int) -> list[onnx.NodeProto]:
        ed, node, h, g = self.ed, self.node, self.hidden, _GATES[self.kind]
        w, r = ed.constant(node.input[1])[0], ed.constant(node.input[2])[0]  # [G*H, I], [G*H, H]
        bias = ed.constant(node.input[3])[0] if len(node.input) > 3 and node.input[3] else np.zeros(2 * g * h)
        wb, rb = bias[: g * h], bias[g * h :]
        if self.kind == "LSTM":  # both biases add before the gates: fold them into the input projection
            x_bias, r_bias = wb + rb, None
        else:  # GRU: the h-gate's recurrent bias sits inside r * (...), keep it with the recurrent MatMul
            x_bias = np.concatenate([wb[: 2 * h] + rb[: 2 * h], wb[2 * h :]])
            r_bias = np.concatenate([np.zeros(2 * h), rb[2 * h :]])
        w_t = ed.add_initializer(f"{node.input[1]}_unrolled", np.ascontiguousarray(w.T, np.float32))
        r_t = ed.add_initializer(f"{node.input[2]}_unrolled", np.ascontiguousarray(r.T, np.float32))
        xb = ed.add_initializer(f"{node.input[1]}_unrolled_bias", x_bias.astype(np.float32))
        rbias = None if r_bias is None else ed.add_initializer(f"{node.input[2]}_unrolled_bias",
                                                               r_bias.astype(np.float32))
        xw = self.op("Add", self.op("MatMul", node.input[0], w_t), xb)  # [T, N, G*H]
        state_h, state_c = self._initial(5), self._initial(6) if self.kind == "LSTM" else None
        split, hs = self.const([h] * g, np.int64), []
        for t in range(steps):
            x_t = self.op("Gather", xw, self.const(t, np.int64), axis=0)
            rec = self.op("MatMul", state_h, r_t)
            if rbias is not None:
                rec = self.op("Add", rec, rbias)
            if self.kind == "LSTM":
                gates = self.op("Split", self.op("Add", x_t, rec), split, n_out=4, axis=-1)
                i, o, f = (self.op("Sigmoid", x) for x in gates[:3])
                cand = self.op("Tanh", gates[3])
                state_c = self.op("Add", self.op("Mul", f, state_c), self.op("Mul", i, cand))
                state_h = self.op("Mul", o, self.op("Tanh", state_c))
            else:
                xz, xr, xh = self.op("Split", x_t, split, n_out=3, axis=-1)
                hz, hr, hh = self.op("Split", rec, split, n_out=3, axis=-1)
                z, rr = self.op("Sigmoid", self.op("Add", xz, hz)), self.op("Sigmoid", self.op("Add", xr, hr))
                n = self.op("Tanh", self.op("Add", xh, self.op("Mul", rr, hh)))
                state_h = self.op("Add", n, self.op("Mul", z, self.op("Sub", state_h, n)))
            hs.append(state_h)
        self._outputs(hs, state_h, state_c)
        return self.nodes

    def _initial(self, idx: int) -> str:
        """initial_h / initial_c squeezed to [N, H], or zeros shaped after the batch of x."""
        node = self.node
        if len(node.input) > idx and node.input[idx]:
            return self.op("Squeeze", node.input[idx], self.const([0], np.int64))
        batch = self.op("Slice", self.op("Shape", node.input[0]), self.const([1], np.int64), self.const([2], np.int64))
        shape = self.op("Concat", batch, self.const([self.hidden], np.int64), axis=0)
        zero = onnx.numpy_helper.from_array(np.zeros(1, np.float32), "value")
        return self.op("ConstantOfShape", shape, value=zero)

    def _outputs(self, hs, last_h, last_c) -> None:
        """Y [T, 1, N, H], Y_h [1, N, H], Y_c [1, N, H]: only those the graph reads are built."""
        outs = list(self.node.output) + [""] * 3
        axes01, axes0 = self.const([0, 1], np.int64), self.const([0], np.int64)
        if outs[0]:
            self.op("Concat", *(self.op("Unsqueeze", x, axes01) for x in hs), out=outs[0], axis=0)
        if outs[1]:
            self.op("Unsqueeze", last_h, axes0, out=outs[1])
        if outs[2] and self.kind == "LSTM":
            self.op("Unsqueeze", last_c, axes0, out=outs[2])
