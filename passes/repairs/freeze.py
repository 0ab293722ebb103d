"""The fallback for a weight no gradient can reach: freeze it in the graph and prune it once, by magnitude.

Freezing is done in the graph so that it holds whoever picks the trainable tensors: the weight is read through an
Identity, so it no longer sits in a weight slot, and the role-based pickers (passes/prunable.py) neither train,
prune nor quantize it. onnxruntime folds the Identity away when it loads the model.
One-shot magnitude pruning (Han et al. 2015): zero the round(n * s) entries of smallest |w|; ties go to the lower
flat index (stable sort), so the result is deterministic.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ._edit import Editor, NodeRepair, Outcome, Repair


def magnitude_prune(w: np.ndarray, sparsity: float) -> np.ndarray:
    """A copy of w with exactly round(w.size * sparsity) smallest-magnitude entries set to 0."""
    k = int(round(w.size * sparsity))
    out = np.array(w, copy=True)
    if k:
        order = np.argsort(np.abs(out).ravel(), kind="stable")
        out.reshape(-1)[order[:k]] = 0
    return out


class FreezeInitializers(Repair):
    """Read each named initializer through an Identity; weights in `prune` are magnitude-pruned to `sparsity`."""

    def __init__(self, names, prune=(), sparsity: float = 0.0):
        self.names, self.prune, self.sparsity = list(names), set(prune), float(sparsity)

    def rewrite(self, ed: Editor, out: Outcome) -> None:
        inits, head = ed.inits(), []
        for name in self.names:
            if name not in inits:
                out.skipped.append(f"{name!r}: no such initializer")
                continue
            frozen = ed.fresh(f"{name}_frozen")
            ed.rename_uses(name, frozen)
            head.append(onnx.helper.make_node("Identity", [name], [frozen], name=ed.fresh(f"{name}/freeze")))
            note = f"froze {name!r} (no gradient reaches it)"
            if name in self.prune and self.sparsity > 0:
                w = numpy_helper.to_array(inits[name])
                inits[name].CopyFrom(numpy_helper.from_array(magnitude_prune(w, self.sparsity), name))
                note += f"; pruned one-shot by magnitude to {self.sparsity:.2%}"
            out.changes.append(note)
        if head:
            first = ed.graph.node[0] if len(ed.graph.node) else None
            ed.splice({0: head + [first]} if first is not None else {})


class ThawInitializers(NodeRepair):
    """Undo FreezeInitializers once fine-tuning is over: consumers read the weight itself again, so the passes that
    work on weight slots (shrinking, int8, sparse storage) treat a frozen weight like every other one."""

    ops = frozenset({"Identity"})

    def rewrite_node(self, ed: Editor, node: onnx.NodeProto, out: Outcome) -> list[onnx.NodeProto] | None:
        if not node.name.endswith("/freeze") or node.input[0] not in ed.inits() or node.output[0] in ed.outputs():
            return None
        ed.rename_uses(node.output[0], node.input[0])
        out.changes.append(f"thawed {node.input[0]!r}")
        return []
