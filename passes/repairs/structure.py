"""Small structural repairs that graphs from exporters need before onnxruntime-training 1.19.2 can differentiate them.

Each is exact: the repaired graph computes the same outputs (runtime/verify.py checks it with onnxruntime).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..graph import opset_version
from ._edit import Editor, NodeRepair, Outcome, Repair, node_label

MIN_OPSET = 13  # int8 QDQ needs per-channel DequantizeLinear (13); gradient graphs need >= 11
MAX_IR = 10  # what onnxruntime(-training) 1.19.2 loads


class UpgradeOpset(Repair):
    """Old graphs (e.g. opset 9 model-zoo files) -> opset 13 with onnx's version converter, IR raised to match.

    Below opset 11 onnxruntime's MatMul gradient emits a two-input Gemm that the checker refuses; below 13 there is
    no per-channel DequantizeLinear. The converter rewrites the ops whose signature changed (Dropout, Softmax, ...)."""

    def __init__(self, version: int = MIN_OPSET):
        self.version = version

    def applies(self, model: onnx.ModelProto) -> bool:
        return (opset_version(model) or 1) < self.version

    def rewrite(self, ed: Editor, out: Outcome) -> None:
        old = opset_version(ed.model) or 1
        if old >= self.version:
            return
        try:
            converted = onnx.version_converter.convert_version(ed.model, self.version)
        except Exception as exc:  # the converter lacks an adapter for some op: leave it to the pre-flight
            out.skipped.append(f"opset {old} -> {self.version} failed: {str(exc).splitlines()[0][:160]}")
            return
        converted.ir_version = min(max(converted.ir_version, 7), MAX_IR)  # opset 13 needs IR >= 7
        ed.model.CopyFrom(converted)
        out.changes.append(f"ai.onnx opset {old} -> {self.version} (onnx.version_converter), IR {converted.ir_version}")


class InitializersNotInputs(Repair):
    """Initializers also listed as graph inputs (IR < 4 required it) become plain initializers.

    Such a tensor can be overridden at run time, so no role-based picker treats it as a parameter; the user never
    feeds them. Names in `keep` (inputs the user does feed) stay inputs."""

    def __init__(self, keep=()):
        self.keep = set(keep)

    def applies(self, model: onnx.ModelProto) -> bool:
        inits = {t.name for t in model.graph.initializer}
        return any(i.name in inits and i.name not in self.keep for i in model.graph.input)

    def rewrite(self, ed: Editor, out: Outcome) -> None:
        inits = ed.inits()
        drop = [i.name for i in ed.graph.input if i.name in inits and i.name not in self.keep]
        if not drop:
            return
        kept = [i for i in ed.graph.input if i.name not in set(drop)]
        del ed.graph.input[:]
        ed.graph.input.extend(kept)
        ed.model.ir_version = max(ed.model.ir_version, 4)
        out.changes.append(f"{len(drop)} initializer(s) were also graph inputs; now plain initializers")


def _dropout_training(ed: Editor, node: onnx.NodeProto) -> bool | None:
    """False: inference (identity); True: trains; None: decided at run time."""
    if len(node.input) < 3 or not node.input[2]:
        return False
    flag = ed.constant(node.input[2])
    return None if flag is None else bool(np.asarray(flag).item())


class RemoveInferenceDropout(NodeRepair):
    """Dropout in inference mode is the identity: bypass it (its unused mask output goes too)."""

    ops = frozenset({"Dropout"})

    def rewrite_node(self, ed: Editor, node: onnx.NodeProto, out: Outcome) -> list[onnx.NodeProto] | None:
        if _dropout_training(ed, node) is not False:
            return None
        if len(node.output) > 1 and node.output[1] and ed.uses(node.output[1]):
            return None
        out.changes.append(f"removed inference-mode Dropout {node_label(node)}")
        if node.output[0] in ed.outputs():  # a graph output keeps its name: an Identity writes it
            return [helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name)]
        ed.rename_uses(node.output[0], node.input[0])
        return []


class DropoutMask(Repair):
    """Training-mode Dropout needs its mask output for onnxruntime's gradient builder; add an unused one."""

    ops = frozenset({"Dropout"})

    def rewrite(self, ed: Editor, out: Outcome) -> None:
        for node in ed.graph.node:
            if node.op_type == "Dropout" and _dropout_training(ed, node) is not False:
                if len(node.output) < 2 or not node.output[1]:
                    del node.output[1:]
                    node.output.append(ed.fresh(f"{node.output[0]}_mask"))
                    out.changes.append(f"added the mask output of training-mode Dropout {node_label(node)} "
                                       "(its outputs are random: not verifiable exactly)")


class CastLikeToCast(NodeRepair):
    """CastLike(x, like) has no gradient; Cast(x, to=type of like) is the same op with a gradient."""

    ops = frozenset({"CastLike"})

    def rewrite_node(self, ed: Editor, node: onnx.NodeProto, out: Outcome) -> list[onnx.NodeProto] | None:
        to = ed.elem_type(node.input[1])
        if not to:
            out.skipped.append(f"CastLike {node_label(node)}: type of {node.input[1]!r} unknown")
            return None
        out.changes.append(f"CastLike {node_label(node)} -> Cast(to={onnx.TensorProto.DataType.Name(to)})")
        return [helper.make_node("Cast", [node.input[0]], list(node.output), name=node.name, to=to)]


class LayerNormOutputs(NodeRepair):
    """onnxruntime's LayerNormalization gradient reads the optional Mean/InvStdDev outputs and the bias input:
    add unused outputs, and a zero bias (a Constant, so nobody trains it) where there is none."""

    ops = frozenset({"LayerNormalization"})

    def rewrite_node(self, ed: Editor, node: onnx.NodeProto, out: Outcome) -> list[onnx.NodeProto] | None:
        added, new = [], None  # the outputs are added in place; only a new bias Constant needs a splice
        if len(node.input) < 3 or not node.input[2]:
            dims = ed.shape(node.input[1])
            if dims is None or None in dims:
                out.skipped.append(f"LayerNormalization {node_label(node)}: scale shape unknown, no bias added")
            else:
                const, name = ed.const(f"{node.output[0]}_zero_bias", np.zeros(dims))
                del node.input[2:]
                node.input.append(name)
                new = [const, node]
                added.append("zero bias")
        for k in (1, 2):
            if len(node.output) <= k:
                node.output.append("")
            if not node.output[k]:
                node.output[k] = ed.fresh(f"{node.output[0]}_{('mean', 'inv_std_dev')[k - 1]}")
                added.append(("Mean", "InvStdDev")[k - 1])
        if added:
            out.changes.append(f"LayerNormalization {node_label(node)}: added {', '.join(added)}")
        return new
