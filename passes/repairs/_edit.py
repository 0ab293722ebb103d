"""What every repair needs: a copied model it may edit, fresh names, constants, node splicing and shape facts."""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..base import Pass, PassResult
from ..graph import NameFactory


@dataclass
class Outcome:
    """A repaired model and, one line each, what changed and what was left alone on purpose."""

    model: onnx.ModelProto
    changes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class Repair(Pass):
    """A functional Pass that also says what it changed; subclasses edit a private copy in `rewrite`.

    `ops`: the op types a repair looks at. A model without any of them is returned as is, uncopied (copying a
    500 MB VGG for every repair that does not apply costs seconds each)."""

    ops: frozenset[str] = frozenset()  # empty: the repair looks at the whole graph

    def call(self, model: onnx.ModelProto) -> PassResult:
        out = self.apply(model)
        return PassResult(out.model, bool(out.changes))

    def applies(self, model: onnx.ModelProto) -> bool:
        """A cheap test: can this repair change anything here?"""
        return not self.ops or any(n.op_type in self.ops for n in model.graph.node)

    def apply(self, model: onnx.ModelProto) -> Outcome:
        if not self.applies(model):
            return Outcome(model)
        out = Outcome(copy_model(model))
        self.rewrite(Editor(out.model), out)
        return out

    @abc.abstractmethod
    def rewrite(self, ed: "Editor", out: Outcome) -> None:
        """Edit ed.model in place; append a line to out.changes per change (out.skipped per deliberate skip)."""


class NodeRepair(Repair):
    """A repair that rewrites the nodes whose op_type is in `ops` (not empty) one at a time, in graph order.

    `rewrite_node` may also edit other nodes and initializers in place (BatchNorm folding edits the layer before it):
    the replacements are spliced in only after the walk, so positions stay valid while it runs."""

    def rewrite(self, ed: "Editor", out: Outcome) -> None:
        ed.replace_each(self.ops, lambda node: self.rewrite_node(ed, node, out))

    @abc.abstractmethod
    def rewrite_node(self, ed: "Editor", node: onnx.NodeProto, out: Outcome) -> list[onnx.NodeProto] | None:
        """The nodes that take `node`'s place (may be empty or include `node`), or None to leave it where it is."""


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


class Editor:
    """Splice nodes into a graph while keeping it topologically sorted: replacements land where the old node was."""

    def __init__(self, model: onnx.ModelProto):
        self.model, self.graph = model, model.graph
        self.fresh = NameFactory(model)
        self._shapes = None

    # ---- facts -------------------------------------------------------------------------------------------------
    def inits(self) -> dict[str, onnx.TensorProto]:
        return {t.name: t for t in self.graph.initializer}

    def array(self, name: str) -> np.ndarray | None:
        t = self.inits().get(name)
        return None if t is None else numpy_helper.to_array(t)

    def fed(self) -> set[str]:
        """Graph inputs: an initializer listed here can be overridden at run time, so it is not a constant."""
        return {i.name for i in self.graph.input}

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer (not overridable) or a Constant node's output; None when not constant."""
        if name in self.fed():
            return None
        value = self.array(name)
        if value is not None:
            return value
        for node in self.graph.node:
            if node.op_type == "Constant" and node.output[0] == name and node.attribute[0].name == "value":
                return numpy_helper.to_array(node.attribute[0].t)
        return None

    def uses(self, name: str) -> list[tuple[onnx.NodeProto, int]]:
        return [(n, i) for n in self.graph.node for i, x in enumerate(n.input) if x == name]

    def producer(self, name: str) -> onnx.NodeProto | None:
        return next((n for n in self.graph.node if name in n.output), None)

    def outputs(self) -> set[str]:
        return {o.name for o in self.graph.output}

    def shape(self, name: str) -> list[int | None] | None:
        """Static dims of a tensor (None per unknown dim), from the model's own shape inference; None if unknown."""
        if self._shapes is None:
            try:
                g = onnx.shape_inference.infer_shapes(self.model, strict_mode=False).graph
            except Exception:
                g = self.graph
            self._shapes = {}
            for vi in list(g.value_info) + list(g.input) + list(g.output):
                tt = vi.type.tensor_type
                if vi.type.HasField("tensor_type") and tt.HasField("shape"):
                    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
                    self._shapes[vi.name] = (dims, tt.elem_type)
            for t in g.initializer:
                self._shapes[t.name] = (list(t.dims), t.data_type)
        return self._shapes.get(name, (None, 0))[0]

    def elem_type(self, name: str) -> int:
        self.shape(name)
        return self._shapes.get(name, (None, 0))[1]

    # ---- edits -------------------------------------------------------------------------------------------------
    def const(self, base: str, value, dtype=np.float32) -> tuple[onnx.NodeProto, str]:
        """A Constant node: repairs keep their constants out of graph.initializer so that no role-based picker
        mistakes them for trainable or prunable parameters (a pooling kernel sits in a Conv weight slot)."""
        name = self.fresh(base)
        tensor = numpy_helper.from_array(np.asarray(value, dtype=dtype), name)
        return helper.make_node("Constant", [], [name], name=self.fresh(f"{name}_const"), value=tensor), name

    def node(self, op: str, inputs: list[str], base: str, n_out: int = 1, **attrs) -> tuple[onnx.NodeProto, list[str]]:
        outs = [self.fresh(f"{base}_{op}" if n_out == 1 else f"{base}_{op}_{k}") for k in range(n_out)]
        return helper.make_node(op, inputs, outs, name=self.fresh(f"{base}/{op}"), **attrs), outs

    def add_initializer(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        self._shapes = None
        return name

    def splice(self, replacements: dict[int, list[onnx.NodeProto]]) -> None:
        """Replace node i (by position) with replacements[i], which may be empty or include the node itself."""
        if not replacements:
            return
        nodes = []
        for i, node in enumerate(self.graph.node):
            nodes.extend(_copy(n) for n in (replacements[i] if i in replacements else [node]))
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        self._shapes = None

    def replace_each(self, ops: Collection[str],
                     replace: Callable[[onnx.NodeProto], list[onnx.NodeProto] | None]) -> None:
        """Splice replace(node) in for every node whose op_type is in `ops`; None leaves the node as it is."""
        repl = {}
        for i, node in enumerate(self.graph.node):
            if node.op_type in ops:
                new = replace(node)
                if new is not None:
                    repl[i] = new
        self.splice(repl)

    def rename_uses(self, old: str, new: str) -> None:
        """Every node input that reads `old` reads `new` instead (graph outputs keep their names)."""
        for node in self.graph.node:
            for i, x in enumerate(node.input):
                if x == old:
                    node.input[i] = new

    def drop_unused_initializers(self, names) -> None:
        used = {x for n in self.graph.node for x in n.input} | self.outputs()
        keep = [_copy(t) for t in self.graph.initializer if t.name in used or t.name not in set(names)]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)
        kept = {t.name for t in keep}
        inputs = [_copy(i) for i in self.graph.input if i.name in kept or i.name not in set(names)]
        del self.graph.input[:]
        self.graph.input.extend(inputs)


def node_label(node: onnx.NodeProto) -> str:
    return repr(node.name or node.output[0])


def _copy(message):
    clone = type(message)()
    clone.CopyFrom(message)
    return clone
