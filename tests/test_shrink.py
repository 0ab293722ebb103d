"""ShrinkDeadUnits: oracle tests against onnxruntime (fp32 outputs before and after agree to 1e-5) on graphs with
biases, residual Add, Concat, pooling and Flatten into Gemm, plus the pass contract (input untouched, valid output,
idempotent, honest `modified`)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from models import IR_VERSION, OPSET, mlp_gemm, mlp_matmul, random_inputs, small_cnn
from onnx import TensorProto, helper, numpy_helper

from onnx_flipout.passes.shrink import ShrinkDeadUnits

ort.set_default_logger_severity(3)


def run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def shapes(model):
    return {t.name: tuple(t.dims) for t in model.graph.initializer}


def edit(model, **arrays):
    """A copy of model with some initializers replaced by (name -> function of the old array)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        key = t.name.replace(".", "_")
        if key in arrays:
            a = numpy_helper.to_array(t).copy()
            arrays[key](a)
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    return out


def shrink_and_check(model, n=8, multiple=1):
    """Shrink, then check the contract and the onnxruntime oracle; returns the shrunk model."""
    model = onnx.shape_inference.infer_shapes(model)  # stale value_info must be cleared by the pass
    before = model.SerializeToString()
    result = ShrinkDeadUnits(multiple)(model)
    assert model.SerializeToString() == before  # functional: input untouched
    onnx.checker.check_model(result.model, full_check=True)
    feeds = random_inputs(model, n=n)
    for ref, got in zip(run(model, feeds), run(result.model, feeds)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    again = ShrinkDeadUnits(multiple)(result.model)
    assert not again.modified and again.model.SerializeToString() == result.model.SerializeToString()
    return result


def init(name, array):
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


def finish(nodes, inits, x_shape, y_shape, outputs=("y",), opset=OPSET):
    graph = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, y_shape if o == "y" else None) for o in outputs], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def gemm(name, inp, out, fan_in, fan_out, rng, dead_in=(), bias_sign=None):
    """Gemm(transB=1) with output units `dead_in` given all-zero incoming weights."""
    w = rng.uniform(-0.5, 0.5, (fan_out, fan_in))
    w[list(dead_in)] = 0
    b = rng.uniform(-0.5, 0.5, fan_out) if bias_sign is None else bias_sign * rng.uniform(0.1, 0.5, fan_out)
    node = helper.make_node("Gemm", [inp, f"{name}.w", f"{name}.b"], [out], transB=1)
    return [node], [init(f"{name}.w", w), init(f"{name}.b", b)]


# ----------------------------------------------------------------------------------------------------- MLPs


def test_gemm_mlp_incoming_dead_units_fold_their_bias():
    model = edit(mlp_gemm((64, 32, 16, 10)), fc1_weight=lambda w: w.__setitem__([0, 3, 5], 0),
                 fc1_bias=lambda b: b.__setitem__([0, 3, 5], [0.4, -0.3, 0.2]),  # relu(b) > 0 for two of them
                 fc2_weight=lambda w: w.__setitem__(2, 0))
    result = shrink_and_check(model)
    assert result.modified
    assert shapes(result.model)["fc1.weight"] == (29, 64) and shapes(result.model)["fc1.bias"] == (29,)
    assert shapes(result.model)["fc2.weight"] == (15, 29) and shapes(result.model)["fc3.weight"] == (10, 15)


def test_matmul_add_mlp_folds_into_the_next_add_bias():
    model = edit(mlp_matmul((64, 32, 10)), fc1_weight=lambda w: w.__setitem__((slice(None), [1, 4]), 0),
                 fc1_bias=lambda b: b.__setitem__([1, 4], 0.3))
    result = shrink_and_check(model)
    assert shapes(result.model)["fc1.weight"] == (64, 30) and shapes(result.model)["fc2.weight"] == (30, 10)


def test_unit_dead_only_on_its_outgoing_side_is_removed():
    model = edit(mlp_gemm((64, 32, 16, 10)), fc2_weight=lambda w: w.__setitem__((slice(None), [7, 8]), 0))
    result = shrink_and_check(model)
    assert shapes(result.model)["fc1.weight"] == (30, 64) and shapes(result.model)["fc2.weight"] == (16, 30)


def test_removal_cascades_to_a_fixed_point():
    # fc2's unit 0 reads only fc1's units 0..3, which are dead: after they go, it is dead too.
    def fc2(w):
        w[0] = 0
        w[0, :4] = 1.0

    model = edit(mlp_gemm((64, 32, 16, 10)), fc1_weight=lambda w: w.__setitem__(slice(0, 4), 0), fc2_weight=fc2)
    result = shrink_and_check(model)
    assert shapes(result.model)["fc2.weight"] == (15, 28)


@pytest.mark.parametrize("act", ["Relu", "Sigmoid", "Tanh", "LeakyRelu", "Clip", "Elu", "Softplus", "HardSigmoid",
                                 "Gelu", "Gelu-tanh"])
def test_constant_goes_through_elementwise_activations(act):
    rng = np.random.default_rng(1)
    n1, i1 = gemm("fc1", "x", "h", 12, 9, rng, dead_in=(0, 4, 8))
    n2, i2 = gemm("fc2", "a", "y", 9, 5, rng)
    extra = [init("lo", -0.1), init("hi", 0.2)] if act == "Clip" else []
    op, kw = (act, {}) if act != "Gelu-tanh" else ("Gelu", {"approximate": "tanh"})
    node = helper.make_node(op, ["h"] + (["lo", "hi"] if act == "Clip" else []), ["a"], **kw)
    opset = 20 if op == "Gelu" else OPSET  # Gelu is an ai.onnx op from opset 20
    result = shrink_and_check(finish(n1 + [node] + n2, i1 + i2 + extra, ["N", 12], ["N", 5], opset=opset))
    assert shapes(result.model)["fc2.w"] == (5, 6)


def test_matmul_consumer_without_bias_takes_only_zero_constants():
    rng = np.random.default_rng(7)
    n1, i1 = gemm("fc1", "x", "h", 12, 6, rng, dead_in=(1, 2))
    b = numpy_helper.to_array(i1[1]).copy()
    b[[1, 2]] = [-0.3, 0.3]  # relu: 0 (removable) and 0.3 (no bias downstream to fold it into: kept)
    i1[1] = init("fc1.b", b)
    w2 = init("w2", rng.uniform(-0.5, 0.5, (6, 3)))
    nodes = n1 + [helper.make_node("Relu", ["h"], ["a"]), helper.make_node("MatMul", ["a", "w2"], ["y"])]
    result = shrink_and_check(finish(nodes, i1 + [w2], ["N", 12], ["N", 3]))
    assert shapes(result.model)["fc1.w"] == (5, 12) and shapes(result.model)["w2"] == (5, 3)


def test_multiple_keeps_widths_aligned_where_it_can():
    model = edit(mlp_gemm((64, 32, 16, 10)), fc1_weight=lambda w: w.__setitem__(slice(0, 11), 0))
    result = shrink_and_check(model, multiple=8)  # 21 live units: 3 dead ones stay for a width of 24
    assert shapes(result.model)["fc1.weight"] == (24, 64) and shapes(result.model)["fc2.weight"] == (16, 24)
    one_dead = edit(mlp_gemm((64, 32, 16, 10)), fc1_weight=lambda w: w.__setitem__(0, 0))
    assert not ShrinkDeadUnits(8)(one_dead).modified  # 32 is aligned; 31 would not be
    with pytest.raises(ValueError, match="positive integer"):
        ShrinkDeadUnits(0)


def test_all_units_dead_keeps_one():
    model = edit(mlp_gemm((64, 32, 10)), fc1_weight=lambda w: w.__setitem__(slice(None), 0))
    result = shrink_and_check(model)
    assert shapes(result.model)["fc1.weight"] == (1, 64) and shapes(result.model)["fc2.weight"] == (10, 1)


# ----------------------------------------------------------------------------------------------------- residual, Concat


def residual(dead1, dead2, skip="h"):
    rng = np.random.default_rng(2)
    n1, i1 = gemm("fc1", "x", "p", 16, 8, rng, dead_in=dead1, bias_sign=1.0)
    n2, i2 = gemm("fc2", "h", "q", 8, 8, rng, dead_in=dead2, bias_sign=1.0)
    n3, i3 = gemm("fc3", "s", "y", 8, 4, rng)
    nodes = n1 + [helper.make_node("Relu", ["p"], ["h"])] + n2 + [helper.make_node("Relu", ["q"], ["r"]),
                                                                    helper.make_node("Add", [skip, "r"], ["s"])] + n3
    return finish(nodes, i1 + i2 + i3, ["N", 16 if skip == "h" else 8], ["N", 4])


def test_residual_add_removes_units_dead_on_both_sides_only():
    result = shrink_and_check(residual(dead1=(1, 2), dead2=(1, 5)))
    # unit 1 is dead on both sides (constant relu(b1) + relu(b2), folded); units 2 and 5 only on one side
    assert shapes(result.model)["fc1.w"] == (7, 16) and shapes(result.model)["fc2.w"] == (7, 7)
    assert shapes(result.model)["fc3.w"] == (4, 7)


def test_residual_from_a_graph_input_is_left_alone():
    rng = np.random.default_rng(3)
    n1, i1 = gemm("fc1", "x", "h", 8, 8, rng, dead_in=(1, 2))
    n3, i3 = gemm("fc3", "s", "y", 8, 4, rng)
    model = finish(n1 + [helper.make_node("Add", ["x", "h"], ["s"])] + n3, i1 + i3, ["N", 8], ["N", 4])
    assert not shrink_and_check(model).modified


def test_concat_along_units_removes_each_branch_slice():
    rng = np.random.default_rng(4)
    na, ia = gemm("fa", "x", "a", 10, 6, rng, dead_in=(2,), bias_sign=1.0)
    nb, ib = gemm("fb", "x", "b", 10, 5, rng, dead_in=(0, 4))
    nc, ic = gemm("fc", "c", "y", 11, 3, rng)
    nodes = na + nb + [helper.make_node("Concat", ["a", "b"], ["c"], axis=1)] + nc
    result = shrink_and_check(finish(nodes, ia + ib + ic, ["N", 10], ["N", 3]))
    assert shapes(result.model)["fa.w"] == (5, 10) and shapes(result.model)["fb.w"] == (3, 10)
    assert shapes(result.model)["fc.w"] == (3, 8)


# ----------------------------------------------------------------------------------------------------- CNNs


def test_conv_channels_through_reshape_into_gemm():
    model = edit(small_cnn((1, 4, 8)), conv2_weight=lambda w: w.__setitem__([0, 7], 0))
    for node in model.graph.node:
        if node.op_type == "Flatten":
            node.CopyFrom(helper.make_node("Reshape", [node.input[0], "flat_shape"], node.output, name=node.name))
    model.graph.initializer.append(numpy_helper.from_array(np.array([0, -1], np.int64), "flat_shape"))
    result = shrink_and_check(model)
    assert shapes(result.model)["fc.weight"] == (10, 6 * 64) and shapes(result.model)["conv2.weight"][0] == 6


def test_conv_channels_through_flatten_into_gemm():
    def conv1(w):  # channel 1: dead, relu(bias) = 0, removable despite conv2's padding; channel 2: relu(bias) > 0
        w[[1, 2]] = 0

    model = edit(small_cnn((1, 4, 8)), conv1_weight=conv1, conv1_bias=lambda b: b.__setitem__([1, 2], [-0.2, 0.3]),
                 conv2_weight=lambda w: w.__setitem__([2, 5], 0), conv2_bias=lambda b: b.__setitem__([2, 5], 0.25))
    result = shrink_and_check(model)
    got = shapes(result.model)
    assert got["conv1.weight"] == (3, 1, 3, 3) and got["conv2.weight"] == (6, 3, 3, 3)
    assert got["fc.weight"] == (10, 6 * 64)  # two 8x8 blocks of Gemm input columns gone


def vgg_block(pad2):
    rng = np.random.default_rng(5)
    w1 = rng.uniform(-0.5, 0.5, (6, 3, 3, 3))
    w1[[0, 4]] = 0
    w2 = rng.uniform(-0.5, 0.5, (8, 6, 3, 3))
    w2[:, 3] = 0  # channel 3 of conv1 is read by nobody
    inits = [init("c1.w", w1), init("c1.b", [0.3, 0.1, 0.2, 0.1, 0.5, 0.1]), init("c2.w", w2),
             init("c2.b", rng.uniform(-0.5, 0.5, 8)), *gemm("fc", "f", "y", 8, 4, rng)[1]]
    nodes = [
        helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "c2.w", "c2.b"], ["c2"], pads=[pad2] * 4),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        gemm("fc", "f", "y", 8, 4, rng)[0][0],
    ]
    return finish(nodes, inits, ["N", 3, 8, 8], ["N", 4])


@pytest.mark.parametrize("pad2, kept", [(0, 3), (1, 5)])
def test_conv_pool_conv_folds_constants_only_into_unpadded_convs(pad2, kept):
    result = shrink_and_check(vgg_block(pad2))
    # channel 3 goes either way (outgoing-dead); channels 0 and 4 (relu(b) > 0) only when conv2 has no padding
    assert shapes(result.model)["c1.w"][0] == kept and shapes(result.model)["c2.w"][1] == kept


# ----------------------------------------------------------------------------------------------------- left alone


def test_nothing_dead_means_unmodified_and_identical():
    for model in (mlp_gemm(), mlp_matmul(), small_cnn()):
        result = ShrinkDeadUnits()(model)
        assert not result.modified and result.model.SerializeToString() == model.SerializeToString()


def test_unsupported_layers_are_left_alone():
    rng = np.random.default_rng(8)
    n1, i1 = gemm("fc1", "x", "h", 8, 6, rng, dead_in=(0, 1))
    vector = init("v", rng.uniform(-0.5, 0.5, 6))  # 1-D MatMul weight: not a layer with units
    model = finish(n1 + [helper.make_node("MatMul", ["h", "v"], ["y"])], i1 + [vector], ["N", 8], ["N"])
    assert not shrink_and_check(model).modified


def test_hidden_graph_output_or_unknown_op_freezes_the_units():
    dead = edit(mlp_gemm((64, 32, 10)), fc1_weight=lambda w: w.__setitem__([0, 1], 0))
    with_output = onnx.ModelProto()
    with_output.CopyFrom(dead)
    with_output.graph.output.append(helper.make_tensor_value_info("a1", TensorProto.FLOAT, None))
    assert not shrink_and_check(with_output).modified
    rng = np.random.default_rng(6)
    n1, i1 = gemm("fc1", "x", "h", 8, 6, rng, dead_in=(0, 1))
    n2, i2 = gemm("fc2", "s", "y", 6, 3, rng)
    softmax = finish(n1 + [helper.make_node("Softmax", ["h"], ["s"])] + n2, i1 + i2, ["N", 8], ["N", 3])
    assert not shrink_and_check(softmax).modified
