"""A fixed batch dimension becomes symbolic, so the model runs at the batch sizes training and calibration use.

Model-zoo files declare inputs like [1, 3, 224, 224] and flatten with Reshape(x, [1, -1]). When every fed input has
the same fixed first dimension b, that dimension becomes 'N', and each Reshape of a batch-carrying tensor whose
constant target starts with b gets 0 there instead ("copy the input's dim 0", allowzero=0). Stale value_info goes.
This is a guess about which axis is the batch: runtime/verify.py checks it (batch of 1 against a batch of 3,
sample by sample) and trainability.prepare_for_training reverts it when the check fails.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..graph import attr
from ._edit import Editor, Outcome, Repair, node_label

BATCH = "N"


class DynamicBatch(Repair):
    def applies(self, model) -> bool:
        inits = {t.name for t in model.graph.initializer}
        return any(_first_dim(i) is not None for i in model.graph.input if i.name not in inits)

    def rewrite(self, ed: Editor, out: Outcome) -> None:
        inits = ed.inits()
        fed = [i for i in ed.graph.input if i.name not in inits]
        firsts = {_first_dim(i) for i in fed}
        if not fed or len(firsts) != 1 or None in firsts:
            return
        (b,) = firsts
        for vi in fed:
            _make_symbolic(vi)
        carrying = _batch_carrying(ed, {vi.name for vi in fed})
        ed.replace_each({"Reshape"}, lambda node: _any_batch_reshape(ed, node, b, carrying, out))
        for vi in ed.graph.output:
            if _first_dim(vi) == b:
                _make_symbolic(vi)
        del ed.graph.value_info[:]
        out.changes.insert(0, f"fixed batch dimension {b} of the input(s) and outputs -> symbolic {BATCH!r}")


def _any_batch_reshape(ed: Editor, node: onnx.NodeProto, b: int, carrying: set[str],
                       out: Outcome) -> list[onnx.NodeProto] | None:
    """A Reshape of a batch-carrying tensor to [b, ...] reads a new target [0, ...]; None when it does not apply."""
    if node.input[0] not in carrying or attr(node, "allowzero", 0):
        return None
    target = ed.constant(node.input[1])
    if target is None or target.ndim != 1 or not len(target) or int(target[0]) != b:
        return None
    new = np.array(target, np.int64)
    new[0] = 0
    const, name = ed.const(f"{node.input[1]}_any_batch", new, np.int64)
    node.input[1] = name
    out.changes.append(f"Reshape {node_label(node)}: target {target.tolist()} -> {new.tolist()}")
    return [const, node]


def _first_dim(vi):
    dims = vi.type.tensor_type.shape.dim
    return dims[0].dim_value if len(dims) and dims[0].HasField("dim_value") else None


def _make_symbolic(vi) -> None:
    dim = vi.type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_param = BATCH


def _batch_carrying(ed: Editor, sources: set[str]) -> set[str]:
    """Tensors computed from the fed inputs (nodes are in topological order)."""
    reached = set(sources)
    for node in ed.graph.node:
        if node.op_type not in ("Shape", "Size") and any(x in reached for x in node.input):
            reached.update(o for o in node.output if o)
    return reached
