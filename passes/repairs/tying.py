"""Untie parameters that exporters tied by accident.

Exporters deduplicate identical initializers: freshly initialised LayerNorms (all ones / all zeros) end up as one
tensor read by every norm (dynamo), or one tensor plus Identity nodes (TorchScript). Training then moves them
together, or, since an Identity output is no initializer, not at all. Each parameter slot gets its own copy here;
the graph computes the same thing, and fine-tuning treats the copies as the separate parameters they were.
"""

from __future__ import annotations

from ._edit import Editor, Outcome, Repair

# (op, input index) that hold a parameter: weights, biases, norm scales/shifts and statistics.
PARAM_SLOTS = {
    ("MatMul", 1), ("Gemm", 1), ("Gemm", 2), ("Conv", 1), ("Conv", 2), ("ConvTranspose", 1), ("ConvTranspose", 2),
    ("LayerNormalization", 1), ("LayerNormalization", 2), ("BatchNormalization", 1), ("BatchNormalization", 2),
    ("BatchNormalization", 3), ("BatchNormalization", 4), ("InstanceNormalization", 1),
    ("InstanceNormalization", 2), ("PRelu", 1),
}  # not Gather's table: an embedding read twice is one lookup table, and copying it only costs memory
_BIAS_AFTER = ("MatMul", "Gemm", "Conv")


def _is_param_use(ed: Editor, node, idx: int) -> bool:
    if (node.op_type, idx) in PARAM_SLOTS:
        return True
    if node.op_type == "Add" and len(node.input) == 2:  # the bias of a MatMul written as MatMul + Add
        other = ed.producer(node.input[1 - idx])
        return other is not None and other.op_type in _BIAS_AFTER
    return False


class UntieInitializers(Repair):
    """Identity(initializer) becomes a copy of the initializer; an initializer read by several parameter slots
    gets one copy per slot (the first slot keeps the original name)."""

    def rewrite(self, ed: Editor, out: Outcome) -> None:
        self._identities(ed, out)
        self._shared(ed, out)

    def _identities(self, ed: Editor, out: Outcome) -> None:
        inits, fed, outputs = ed.inits(), ed.fed(), ed.outputs()
        repl = {}
        for i, node in enumerate(ed.graph.node):
            src = node.input[0] if node.op_type == "Identity" else None
            if src not in inits or src in fed or node.output[0] in outputs:
                continue
            uses = ed.uses(node.output[0])
            if not any(_is_param_use(ed, n, k) for n, k in uses):
                continue
            copy = ed.add_initializer(node.output[0] + "__untied", ed.array(src))
            ed.rename_uses(node.output[0], copy)
            repl[i] = []
            out.changes.append(f"Identity {node.output[0]!r} of initializer {src!r}: now its own copy {copy!r}")
        ed.splice(repl)

    def _shared(self, ed: Editor, out: Outcome) -> None:
        fed = ed.fed()
        for name in list(ed.inits()):
            if name in fed:
                continue
            uses = ed.uses(name)
            if len(uses) < 2 or not any(_is_param_use(ed, n, k) for n, k in uses):
                continue
            uses.sort(key=lambda u: not _is_param_use(ed, *u))  # a parameter slot keeps the original name
            value = ed.array(name)
            for node, idx in uses[1:]:
                node.input[idx] = ed.add_initializer(f"{name}__untied", value)
            out.changes.append(f"initializer {name!r} was shared by {len(uses)} uses; untied into separate copies")
