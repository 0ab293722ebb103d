"""Small read-only helpers over a GraphProto, shared by the passes."""

from __future__ import annotations

from collections import defaultdict

import onnx


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def consumers(model: onnx.ModelProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    """tensor name -> [(node, input index)] for every node input that reads it (top-level graph only)."""
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name:
                uses[name].append((node, i))
    return uses


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output if out}


def graph_input_names(model: onnx.ModelProto) -> set[str]:
    return {i.name for i in model.graph.input}


def model_input_names(model: onnx.ModelProto) -> list[str]:
    """Inputs a caller must feed: graph inputs that are not also initializers."""
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def opset_version(model: onnx.ModelProto, domain: str = "") -> int | None:
    for op in model.opset_import:
        if op.domain in (domain, "ai.onnx" if domain == "" else domain):
            return op.version
    return None


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


class NameFactory:
    """Fresh tensor/node names that never collide with anything already in the graph."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self._taken = {t.name for t in g.initializer} | {v.name for v in g.input} | {v.name for v in g.output}
        self._taken |= {t.values.name for t in g.sparse_initializer}
        for node in g.node:
            self._taken.update(node.input)
            self._taken.update(node.output)
            self._taken.add(node.name)

    def __call__(self, base: str) -> str:
        name, k = base, 1
        while name in self._taken:
            name, k = f"{base}_{k}", k + 1
        self._taken.add(name)
        return name
