"""Every repair against its oracle: onnxruntime on random inputs (same outputs), the pre-flight (no blocker left),
and, for the ones that matter most, the training build itself (artifacts and a first step, guarded)."""

import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from onnx_flipout.errors import TrainingError
from onnx_flipout.passes import repairs as R
from onnx_flipout.passes.preflight import run_preflight
from onnx_flipout.passes.prunable import find_prunable_weights, find_trainable_params
from onnx_flipout.runtime.verify import random_feeds, verify_rewrite
from onnx_flipout.trainability import prepare_for_training


def _model(nodes, inits, x_shape=("N", 8), y_shape=None, opset=17, ir=8):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)
    if y_shape is None:  # the checker wants an output shape: take the inferred one
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        del probe.graph.output[:]
        inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(probe).graph.value_info}
        model.graph.output[0].CopyFrom(inferred["y"])
    return model


def _t(name, shape, seed=0, scale=1.0, low=None):
    rng = np.random.default_rng(seed)
    value = rng.uniform(low, 1.5, shape) if low is not None else rng.normal(size=shape) * scale
    return numpy_helper.from_array(value.astype(np.float32), name)


def _check(repair, model, blocker_gone=True):
    """The repair changed something, computes the same outputs, and leaves no blocker on `y`."""
    before = model.SerializeToString()
    out = repair.apply(model)
    assert out.changes, out.skipped
    assert model.SerializeToString() == before  # functional: the input is untouched
    onnx.checker.check_model(out.model)
    verdict = verify_rewrite(model, out.model)
    assert verdict.ok, verdict.detail
    if blocker_gone:
        assert run_preflight(out.model, "y").ok, run_preflight(out.model, "y").blockers
    return out.model


@pytest.mark.parametrize("op,attrs", [
    ("HardSwish", {}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("Softplus", {}), ("Elu", {"alpha": 0.7}),
    ("Selu", {}), ("Celu", {"alpha": 2.0}), ("Softsign", {}), ("ThresholdedRelu", {"alpha": 0.5}), ("Mish", {}),
])
def test_activation_rewrites_are_exact(op, attrs):
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node(op, ["h"], ["y"], **attrs)]
    # weights of scale 20 push Softplus/Exp into the range where a naive formula overflows
    _check(R.DifferentiableActivations(), _model(nodes, [_t("W", (8, 8), scale=20.0)], opset=18))


def test_prelu_and_variadic_sum_mean():
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("PRelu", ["c", "slope"], ["p"]),
             helper.make_node("Sum", ["p", "c", "p"], ["s"]), helper.make_node("Mean", ["s", "c"], ["y"])]
    m = _model(nodes, [_t("W", (4, 3, 3, 3)), _t("slope", (4, 1, 1), scale=0.3)], x_shape=("N", 3, 6, 6))
    _check(R.VariadicToAdd(), _check(R.DifferentiableActivations(), m, blocker_gone=False))


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [2, 2], "strides": [2, 2]},
    {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]},  # padding not counted: a count map
    {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1},
    {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},  # 6x6: ceil = floor, still exact
])
def test_average_pool_becomes_a_depthwise_conv(attrs):
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("AveragePool", ["c"], ["y"], **attrs)]
    out = _check(R.AveragePoolToConv(), _model(nodes, [_t("W", (4, 3, 3, 3))], x_shape=("N", 3, 6, 6)))
    assert [s.name for s in find_prunable_weights(out)] == ["W"]  # the constant kernel is no weight to train


@pytest.mark.parametrize("size", [3, 5])  # onnxruntime runs odd sizes only
def test_lrn_becomes_a_channel_window_conv(size):
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]),
             helper.make_node("LRN", ["c"], ["y"], size=size, alpha=1e-2, beta=0.75, bias=2.0)]
    _check(R.LRNToConv(), _model(nodes, [_t("W", (6, 3, 3, 3))], x_shape=("N", 3, 6, 6)))


def _bn(inputs, out, c, seed=1):
    inits = [_t(f"{out}_g", (c,), seed, low=0.5), _t(f"{out}_b", (c,), seed + 1), _t(f"{out}_m", (c,), seed + 2),
             _t(f"{out}_v", (c,), seed + 3, low=0.5)]
    return helper.make_node("BatchNormalization", [inputs] + [t.name for t in inits], [out]), inits


def test_batchnorm_folds_into_conv_and_gemm_else_becomes_frozen_affine():
    bn1, i1 = _bn("c", "b1", 4)
    bn2, i2 = _bn("f", "b2", 5)
    bn3, i3 = _bn("r", "y", 5)  # after a Relu: nothing to fold into
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), bn1, helper.make_node("Flatten", ["b1"], ["fl"]),
             helper.make_node("Gemm", ["fl", "G"], ["f"], transB=1), bn2, helper.make_node("Relu", ["b2"], ["r"]), bn3]
    m = _model(nodes, [_t("W", (4, 3, 3, 3)), _t("G", (5, 64), scale=0.2)] + i1 + i2 + i3, x_shape=("N", 3, 6, 6))
    folded = _check(R.FoldBatchNorm(), m)
    assert [n.op_type for n in folded.graph.node].count("BatchNormalization") == 1
    affine = _check(R.BatchNormToAffine(), folded)
    assert "BatchNormalization" not in {n.op_type for n in affine.graph.node}


def test_layernorm_gets_outputs_and_bias_and_then_trains(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("LayerNormalization", ["h", "s"], ["y"])]
    m = _model(nodes, [_t("W", (8, 8)), _t("s", (8,), low=0.5)], y_shape=["N", 8])
    fixed = _check(R.LayerNormOutputs(), m)
    _guarded(fixed, tmp_path)


def test_dropout_castlike_and_initializer_inputs():
    ratio = numpy_helper.from_array(np.array(0.5, np.float32), "ratio")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Dropout", ["h", "ratio"], ["d"]),
             helper.make_node("CastLike", ["d", "like"], ["y"])]
    like = numpy_helper.from_array(np.zeros(1, np.float64), "like")
    m = _model(nodes, [_t("W", (8, 8)), ratio, like])
    m.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [8, 8]))
    assert find_trainable_params(m) == []  # overridable at run time: not a parameter
    plain = R.InitializersNotInputs().apply(m).model
    assert find_trainable_params(plain) == ["W"]
    _check(R.CastLikeToCast(), _check(R.RemoveInferenceDropout(), plain, blocker_gone=False))


def test_training_mode_dropout_gets_its_mask_and_trains(tmp_path):
    flags = [numpy_helper.from_array(np.array(0.3, np.float32), "ratio"), numpy_helper.from_array(np.array(True), "on")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Dropout", ["h", "ratio", "on"], ["y"])]
    m = _model(nodes, [_t("W", (8, 8))] + flags, y_shape=["N", 8])
    assert "mask" in run_preflight(m, "y").blockers[0].reason
    repaired, log = prepare_for_training(m)
    assert len(repaired.graph.node[1].output) == 2 and "random" in log.verification["detail"] and not log.blockers
    _guarded(repaired, tmp_path)


def test_untie_identity_copies_and_shared_initializers():
    nodes = [helper.make_node("Identity", ["W"], ["W2"]), helper.make_node("MatMul", ["x", "W"], ["a"]),
             helper.make_node("MatMul", ["a", "W2"], ["b"]), helper.make_node("Add", ["b", "bias"], ["c"]),
             helper.make_node("MatMul", ["c", "W"], ["d"]), helper.make_node("Add", ["d", "bias"], ["y"])]
    m = _model(nodes, [_t("W", (8, 8), scale=0.3), _t("bias", (8,))])
    out = _check(R.UntieInitializers(), m)
    assert len(find_prunable_weights(out)) == 3 and len(find_trainable_params(out)) == 5


def test_weights_computed_from_constants_become_initializers():
    """Gemm(x, Reshape(w, shape)) as the model zoo writes its classifiers: the Reshape is folded away."""
    shape = numpy_helper.from_array(np.array([4, 8], np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["w", "shape"], ["wr"]),
             helper.make_node("Gemm", ["x", "wr"], ["y"], transB=1)]
    m = _model(nodes, [_t("w", (32,)), shape])
    assert find_prunable_weights(m) == []
    out = _check(R.FoldConstantWeights(), m)
    assert [s.shape for s in find_prunable_weights(out)] == [(4, 8)] and len(out.graph.node) == 1


def test_other_outputs_are_kept_and_verified():
    """Training on `y` repairs the whole graph; the second output `z` is checked as well."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("HardSwish", ["y"], ["z"])]
    m = _model(nodes, [_t("W", (8, 8))], y_shape=["N", 8])
    m.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 8]))
    repaired, log = prepare_for_training(m, "y")
    assert [o.name for o in repaired.graph.output] == ["y", "z"] and set(log.verification["outputs"]) == {"y", "z"}


def test_opset_upgrade_and_dynamic_batch_of_a_zoo_style_graph():
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Reshape", ["c", "shape"], ["r"]),
             helper.make_node("Gemm", ["r", "G", "b"], ["y"], transB=1)]
    m = _model(nodes, [_t("W", (2, 3, 3, 3)), shape, _t("G", (4, 32)), _t("b", (4,))], x_shape=(1, 3, 6, 6),
               y_shape=[1, 4], opset=9, ir=3)
    m.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in m.graph.initializer)
    repaired, log = prepare_for_training(m)
    assert log.verification["ok"] and not log.blockers and log.blockers_before
    assert repaired.opset_import[0].version == 13 and repaired.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert any("DynamicBatch" in r for r in log.repairs)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_recurrent_unroll_matches_torch(cell, tmp_path):
    torch.manual_seed(0)
    net = getattr(torch.nn, cell)(5, 7, batch_first=True).eval()
    x = torch.randn(3, 6, 5)
    torch.onnx.export(net, (x,), str(tmp_path / "rnn.onnx"), dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y", "h"], dynamic_axes={"x": {0: "N"}})
    m = onnx.load(str(tmp_path / "rnn.onnx"))
    out = R.UnrollRecurrent().apply(m)
    assert out.changes and cell not in {n.op_type for n in out.model.graph.node}
    from onnx_flipout.runtime.session import make_session

    got = make_session(out.model).run(["y"], {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, net(x)[0].detach().numpy(), atol=1e-5)
    assert {s.op_type for s in find_prunable_weights(out.model)} == {"MatMul"}  # W^T and R^T are weights now


def test_fallback_freezes_and_prunes_what_no_gradient_reaches(tmp_path):
    """CumSum has no gradient and no repair: the weight before it is frozen and pruned once, the rest trains."""
    axis = numpy_helper.from_array(np.array(1, np.int64), "axis")
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["a"]), helper.make_node("CumSum", ["a", "axis"], ["c"]),
             helper.make_node("MatMul", ["c", "W2"], ["y"])]
    m = _model(nodes, [_t("W1", (8, 8)), axis, _t("W2", (8, 4), seed=1)], y_shape=["N", 4])
    repaired, log = prepare_for_training(m, sparsity=0.5)
    assert list(log.frozen) == ["W1"] and "CumSum" in log.frozen["W1"] and "one-shot" in log.frozen["W1"]
    assert not log.blockers and find_trainable_params(repaired) == ["W2"]
    w1 = numpy_helper.to_array(next(t for t in repaired.graph.initializer if t.name == "W1"))
    assert (w1 == 0).sum() == 32
    kept = np.abs(numpy_helper.to_array(m.graph.initializer[0]))[w1 != 0]
    assert kept.min() >= np.abs(numpy_helper.to_array(m.graph.initializer[0]))[w1 == 0].max()
    _guarded(repaired, tmp_path)


def test_a_repair_that_changes_outputs_is_reverted():
    class Wrong(R.Repair):
        def rewrite(self, ed, out):
            ed.graph.node[0].op_type = "Sigmoid"
            out.changes.append("broke it")

    m = _model([helper.make_node("Relu", ["x"], ["y"])], [])
    repaired, log = prepare_for_training(m, repairs=[Wrong()])
    assert log.reverted and log.reverted[0].startswith("Wrong") and not log.repairs
    assert repaired.graph.node[0].op_type == "Relu" and log.verification["ok"]


def _guarded(model, tmp_path):
    from onnx_flipout.runtime.guarded import guarded_build_artifacts
    from onnx_flipout.runtime.losses import LossSpec
    from onnx_flipout.runtime.session import make_session

    feeds = random_feeds(model, 4)
    target = make_session(model).run(["y"], feeds)[0]
    arts = guarded_build_artifacts(model, find_trainable_params(model), "y", LossSpec("mse"), "sgd",
                                   tmp_path / "arts", feeds, target)
    assert arts.training_model.exists() and arts.checkpoint.exists()


@pytest.mark.training
def test_guarded_turns_the_averagepool_sigfpe_into_a_training_error(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]),
             helper.make_node("AveragePool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "G"], ["y"], transB=1)]
    m = _model(nodes, [_t("W", (4, 3, 3, 3)), _t("G", (3, 64))], x_shape=("N", 3, 10, 10), y_shape=["N", 3])
    with pytest.raises(TrainingError, match="SIGFPE.*first training step"):
        _guarded(m, tmp_path)
    repaired, log = prepare_for_training(m)  # the process is alive, and the repaired graph trains
    _guarded(repaired, tmp_path)
