"""Which initializers are prunable weights, and which are trainable, chosen by their role in the graph.

Exporters turn constants into float initializers and may merge identical tensors, so "every float initializer" is
wrong (FIELD-NOTES). A weight is prunable when it is a float initializer in the weight slot of MatMul, Gemm or Conv
and every use of it is such a slot. Biases (Gemm C, Conv B, the constant operand of an Add after a MatMul) are
trained but never pruned.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from .graph import attr, consumers, graph_input_names, initializers, producers

_FLOAT_TYPES = {onnx.TensorProto.FLOAT}


@dataclass(frozen=True)
class WeightSlot:
    """A prunable weight tensor and the axis that indexes the layer's output units (for per-channel quantization)."""

    name: str
    shape: tuple[int, ...]
    op_type: str
    out_axis: int

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def _weight_out_axis(node: onnx.NodeProto, shape: tuple[int, ...]) -> int | None:
    """Output-unit axis of the tensor in input slot 1 of node, or None if that slot is not a weight slot we handle."""
    if node.op_type == "Conv" and len(shape) >= 3:
        return 0
    if node.op_type == "Gemm" and len(shape) == 2:
        return 0 if attr(node, "transB", 0) else 1
    if node.op_type == "MatMul" and len(shape) == 2:
        return 1
    return None


def find_prunable_weights(model: onnx.ModelProto) -> list[WeightSlot]:
    inits = initializers(model)
    uses = consumers(model)
    overridable = graph_input_names(model)  # an initializer that is also a graph input may be fed at run time
    slots = []
    for name, tensor in inits.items():
        if tensor.data_type not in _FLOAT_TYPES or name in overridable or not uses.get(name):
            continue
        shape = tuple(tensor.dims)
        axes = {_weight_out_axis(node, shape) if idx == 1 else None for node, idx in uses[name]}
        if len(axes) == 1 and None not in axes:
            op_type = uses[name][0][0].op_type
            slots.append(WeightSlot(name, shape, op_type, axes.pop()))
    return slots


def find_bias_params(model: onnx.ModelProto) -> list[str]:
    """Float initializers used as a bias: Gemm C, Conv B, or the constant operand of an Add fed by a MatMul."""
    inits = initializers(model)
    made_by = producers(model)
    overridable = graph_input_names(model)
    biases = []
    for name, uses in consumers(model).items():
        t = inits.get(name)
        if t is None or t.data_type not in _FLOAT_TYPES or name in overridable:
            continue
        if all(_is_bias_use(node, idx, made_by) for node, idx in uses):
            biases.append(name)
    return biases


def _is_bias_use(node: onnx.NodeProto, idx: int, made_by: dict[str, onnx.NodeProto]) -> bool:
    if node.op_type in ("Gemm", "Conv") and idx == 2:
        return True
    if node.op_type == "Add":
        other = node.input[1 - idx]
        return other in made_by and made_by[other].op_type in ("MatMul", "Gemm", "Conv")
    return False


def find_trainable_params(model: onnx.ModelProto) -> list[str]:
    """Prunable weights first, then biases: the tensors fine-tuning updates."""
    weights = [s.name for s in find_prunable_weights(model)]
    return weights + [b for b in find_bias_params(model) if b not in weights]
