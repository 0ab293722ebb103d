"""compress() on graphs onnxruntime-training cannot train as given: the repair stage runs inside compress, frozen
weights are pruned one-shot and reported, other outputs are kept and verified, and a crash of onnxruntime-training
becomes a clear error with nothing written."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_flipout import compress
from onnx_flipout.errors import TrainingError
from onnx_flipout.passes import DensifyInitializers
from onnx_flipout.report import FROZEN, OFF_PATH

pytestmark = pytest.mark.training


def _t(name, shape, seed):
    return numpy_helper.from_array(np.random.default_rng(seed).normal(size=shape).astype(np.float32), name)


def _blocked_model() -> onnx.ModelProto:
    """y = MatMul(Relu(CumSum(x W1)), W2) with W2 through HardSwish; z = x W3 is a second output.
    CumSum has no gradient (W1 must be frozen), HardSwish has a CPU gradient only once rewritten."""
    axis = numpy_helper.from_array(np.array(1, np.int64), "axis")
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["a"]), helper.make_node("CumSum", ["a", "axis"], ["c"]),
        helper.make_node("MatMul", ["c", "W2"], ["h"]), helper.make_node("HardSwish", ["h"], ["s"]),
        helper.make_node("MatMul", ["s", "W4"], ["y"]), helper.make_node("MatMul", ["x", "W3"], ["z"]),
    ]
    inits = [_t("W1", (16, 16), 0), axis, _t("W2", (16, 16), 1), _t("W4", (16, 4), 2), _t("W3", (16, 3), 3)]
    graph = helper.make_graph(
        nodes, "blocked", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_repairs_freezing_and_other_outputs_show_in_the_report(tmp_path):
    src, out = tmp_path / "m.onnx", tmp_path / "small.onnx"
    onnx.save(_blocked_model(), str(src))
    x = np.random.default_rng(0).normal(size=(96, 16)).astype(np.float32)
    rep = compress(src, out, data={"x": x}, sparsity=0.5, epochs=2, batch_size=16, optimizer="adamw",
                   distill="mse", progress=False)
    log = rep.trainability
    assert any("HardSwish" in r for r in log["repairs"]) and log["verification"]["ok"]
    assert list(log["frozen"]) == ["W1"] and "CumSum" in log["frozen"]["W1"] and not log["blockers"]
    roles = {t.name: (t.role, t.sparsity) for t in rep.tensors}
    assert roles["W1"] == (FROZEN, 0.5) and roles["W3"] == (OFF_PATH, 0.0)  # W3 only feeds z: left alone
    n = 16 * 16 * 2 + 16 * 4
    assert rep.prunable_weights == n and abs(rep.achieved_sparsity - 0.5) <= 1 / n
    # the second output is kept and measured: only int8 rounding of W3 touches it
    assert set(rep.other_outputs) == {"z"} and rep.other_outputs["z"]["cosine"] > 0.99
    text = rep.format_text()
    assert "frozen   W1" in text and "repaired" in text and "z:" in text and OFF_PATH in text
    # the freeze is undone before quantization: W1 is an int8 weight like the others, no Identity left
    model = onnx.load(str(out))
    assert not [n for n in model.graph.node if n.op_type == "Identity"]
    int8 = {t.name for t in DensifyInitializers()(model).model.graph.initializer if t.data_type == TensorProto.INT8}
    assert any(name.startswith("W1") for name in int8), int8


def _average_pool_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]),
             helper.make_node("AveragePool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "G"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [_t("W", (4, 3, 3, 3), 0), _t("G", (3, 64), 1)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_crash_in_onnxruntime_training_is_an_error_and_writes_nothing(tmp_path):
    """AveragePool's gradient kills onnxruntime-training 1.19.2 with SIGFPE: unrepaired (--no-repair) that is a
    TrainingError naming the signal and stage; repaired (the default) the same model compresses."""
    src, out = tmp_path / "pool.onnx", tmp_path / "small.onnx"
    onnx.save(_average_pool_model(), str(src))
    data = {"x": np.random.default_rng(0).normal(size=(40, 3, 10, 10)).astype(np.float32)}
    options = dict(sparsity=0.5, epochs=1, batch_size=8, distill="mse", progress=False)
    with pytest.raises(TrainingError, match="SIGFPE.*first training step"):
        compress(src, out, data=data, repair=False, **options)
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))
    rep = compress(src, out, data=data, **options)
    assert any("AveragePool" in r for r in rep.trainability["repairs"]) and out.exists()
    assert abs(rep.achieved_sparsity - 0.5) < 1e-3
