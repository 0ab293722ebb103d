"""Weights computed from constants become initializers, so they can be trained, pruned and quantized.

Old exporters write a layer's weight as Reshape(initializer, shape) (the model-zoo Inception's classifier), and
TorchScript writes a tied weight as Transpose(initializer): the layer then reads no initializer, and no role-based
picker sees a weight there. Each such constant subgraph feeding a weight or bias slot is evaluated once with onnx's
reference evaluator (pure onnx) and replaced by an initializer; nodes nobody reads any more are dropped.
"""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from ._edit import Editor, Outcome, Repair

SLOTS = {("Conv", 1), ("Conv", 2), ("Gemm", 1), ("Gemm", 2), ("MatMul", 1)}
_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                     "Bernoulli"}


class FoldConstantWeights(Repair):
    def rewrite(self, ed: Editor, out: Outcome) -> None:
        inits, fed = ed.inits(), ed.fed()
        made_by = {o: n for n in ed.graph.node for o in n.output}
        for node in list(ed.graph.node):
            for idx, name in enumerate(node.input):
                if (node.op_type, idx) not in SLOTS or not name or name in inits or name not in made_by:
                    continue
                chain = _constant_chain(name, made_by, inits, fed)
                if chain is None or all(n.op_type == "Constant" for n in chain):
                    continue
                value = _evaluate(chain, name, inits, ed.model)
                node.input[idx] = ed.add_initializer(f"{name}_folded", value)
                ops = "/".join(dict.fromkeys(n.op_type for n in chain))
                out.changes.append(f"{node.op_type} input {idx} computed by {ops} from constants -> initializer")
        if out.changes:
            _drop_dead_nodes(ed)


def _constant_chain(name, made_by, inits, fed) -> list[onnx.NodeProto] | None:
    """The nodes computing `name` from initializers/Constants alone, in topological order; None if any input is fed."""
    chain, stack, seen = [], [name], set()
    while stack:
        t = stack.pop()
        if t in seen or (t in inits and t not in fed):
            continue
        seen.add(t)
        node = made_by.get(t)
        if node is None or node.op_type in _NONDETERMINISTIC or t in fed:
            return None
        chain.append(node)
        stack.extend(x for x in node.input if x)
    order = {id(n): i for i, n in enumerate(made_by.values())}
    unique = {id(n): n for n in chain}
    return sorted(unique.values(), key=lambda n: order[id(n)])


def _evaluate(chain, name, inits, model):
    needed = {x for n in chain for x in n.input if x in inits}
    graph = helper.make_graph(list(chain), "fold", [], [helper.make_tensor_value_info(name, 0, None)],
                              [inits[x] for x in needed])
    folded = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return ReferenceEvaluator(folded).run([name], {})[0]


def _drop_dead_nodes(ed: Editor) -> None:
    outputs = ed.outputs()
    while True:
        read = {x for n in ed.graph.node for x in n.input} | outputs
        dead = {i: [] for i, n in enumerate(ed.graph.node) if not any(o in read for o in n.output if o)}
        if not dead:
            return
        ed.splice(dead)
