"""The trainability pre-flight: which nodes block gradients, against tiny graphs and against the training build."""

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_flipout.errors import TrainingError
from onnx_flipout.passes.preflight import GRADIENT_OPS, NO_GRADIENT, run_preflight


def _model(nodes, inits, outputs=("y",), opset=17, x_shape=("N", 8)):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _w(name, shape=(8, 8), seed=0):
    return numpy_helper.from_array(np.random.default_rng(seed).normal(size=shape).astype(np.float32), name)


def test_blocker_after_a_trainable_weight_names_node_op_and_weight():
    m = _model([helper.make_node("MatMul", ["x", "W"], ["h"], name="fc"),
                helper.make_node("Elu", ["h"], ["y"], name="act")], [_w("W")])
    pre = run_preflight(m, "y")
    assert [(b.node, b.op_type, b.params) for b in pre.blockers] == [("act", "Elu", ("W",))]
    assert "no gradient builder" in str(pre.blockers[0]) and pre.blocked_params() == ["W"]


def test_ops_before_every_trainable_weight_do_not_block():
    """Elu on the input needs no gradient: nothing trainable is upstream of it."""
    m = _model([helper.make_node("Elu", ["x"], ["e"], name="act"),
                helper.make_node("MatMul", ["e", "W"], ["y"], name="fc")], [_w("W")])
    assert run_preflight(m, "y").ok


def test_only_the_chosen_output_counts():
    """A gradient-less op on another output's branch does not block training on `y`."""
    m = _model([helper.make_node("MatMul", ["x", "W"], ["y"], name="fc"),
                helper.make_node("HardSwish", ["y"], ["z"], name="side")], [_w("W")], outputs=("y", "z"))
    assert run_preflight(m, "y").ok
    assert [b.node for b in run_preflight(m, "z").blockers] == ["side"]


def test_integer_paths_carry_no_gradient():
    """Shape -> Cast(float) -> Round depends on the weights only through integers: no blocker."""
    m = _model([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Shape", ["h"], ["s"]),
                helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
                helper.make_node("Round", ["sf"], ["r"]), helper.make_node("Add", ["h", "r"], ["y"])],
               [_w("W")])
    assert run_preflight(m, "y").ok


def test_structural_problems_and_old_opsets_are_reported():
    ln = _model([helper.make_node("MatMul", ["x", "W"], ["h"]),
                 helper.make_node("LayerNormalization", ["h", "s"], ["y"], name="ln")],
                [_w("W"), numpy_helper.from_array(np.ones(8, np.float32), "s")])
    assert "Mean/InvStdDev" in run_preflight(ln, "y").blockers[0].reason
    old = _model([helper.make_node("MatMul", ["x", "W"], ["y"])], [_w("W")], opset=9)
    assert "opset 9" in run_preflight(old, "y").blockers[0].reason


def test_unknown_and_custom_ops_are_blockers_not_guesses():
    m = _model([helper.make_node("MatMul", ["x", "W"], ["h"]),
                helper.make_node("FusedThing", ["h"], ["y"], name="f", domain="com.example")], [_w("W")])
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    assert "custom-domain" in run_preflight(m, "y").blockers[0].reason


def test_graph_passes_import_without_onnxruntime():
    code = ("import sys; import onnx_flipout.passes.preflight, onnx_flipout.passes.repairs; "
            "assert 'onnxruntime' not in sys.modules, 'passes imported onnxruntime'")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the tables against the training build itself -------------------------------------------------------------

def _gradient_builds(op: str) -> bool:
    from onnx_flipout.runtime.artifacts import build_artifacts
    from onnx_flipout.runtime.losses import LossSpec

    m = _model([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node(op, ["h"], ["y"])],
               [_w("W")])
    m.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8]))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            build_artifacts(m, ["W"], "y", LossSpec("mse"), "sgd", Path(tmp))
            return True
        except TrainingError:
            return False


@pytest.mark.training
@pytest.mark.parametrize("op", ["Elu", "HardSwish", "Softplus", "Selu", "Relu", "LeakyRelu", "Clip", "Erf"])
def test_tables_match_onnxruntime_training(op):
    assert _gradient_builds(op) == (op in GRADIENT_OPS)
    assert (op in NO_GRADIENT) == (op not in GRADIENT_OPS)
