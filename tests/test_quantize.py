"""Static int8 QDQ: oracle tests against fp32 onnxruntime and onnxruntime's own quantize_static."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from models import mlp_gemm, mlp_matmul, random_inputs, small_cnn
from onnx_flipout.errors import ConfigError, DataError
from onnx_flipout.passes.quantize import InsertQDQ, activation_tensors, quantizable_nodes, relu_folds
from onnx_flipout.runtime.calibrate import collect_ranges
from onnx_flipout.runtime.session import make_session

BUILDERS = {"mlp_gemm": mlp_gemm, "mlp_matmul": mlp_matmul, "small_cnn": small_cnn}
FUSED = {"mlp_gemm": {"QGemm"}, "mlp_matmul": {"QLinearMatMul"}, "small_cnn": {"QLinearConv", "QGemm"}}
# Ops that move values without changing them: DQ -> op -> Q with equal parameters is a lossless round trip.
DATA_MOVEMENT = {"Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze"}


def calibration(model, seeds=range(4), n=32):
    return [random_inputs(model, n, seed=s) for s in seeds]


def quantize(model, batches=None):
    ranges = collect_ranges(model, batches or calibration(model), activation_tensors(model))
    return InsertQDQ(ranges)(model)


def run(model, feeds, path=None):
    return make_session(model, threads=1, optimized_model_path=path).run(None, feeds)[0]


def rms(a) -> float:
    return float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def case(request):
    """(name, fp32 model, our QDQ model, held-out feeds): one calibration per builder for the whole module."""
    model = BUILDERS[request.param]()
    return request.param, model, quantize(model).model, random_inputs(model, 64, seed=99)


def test_close_to_fp32(case):
    _, model, qdq, feeds = case
    ref, got = run(model, feeds), run(qdq, feeds)
    # 8-bit steps through 2-3 layers: ~2-3 % RMS here; held-out samples beyond the calibrated range clip (max error).
    assert rms(got - ref) <= 0.05 * rms(ref)
    assert np.abs(got - ref).max() <= 0.25 * np.abs(ref).max()


def test_agrees_with_onnxruntime_quantize_static(case, tmp_path, caplog):
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self, batches):
            self.batches = iter(batches)

        def get_next(self):
            return next(self.batches, None)

    name, model, ours, feeds = case
    onnx.save(model, tmp_path / "fp32.onnx")
    caplog.set_level(logging.ERROR)  # quantize_static's "consider pre-processing" advice
    quantize_static(
        tmp_path / "fp32.onnx", tmp_path / "ort.onnx", Reader(calibration(model)), quant_format=QuantFormat.QDQ,
        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    theirs = onnx.load(tmp_path / "ort.onnx")
    # Same formulas: the int8 weights are identical and the scales agree to float32 rounding.
    a = {t.name: numpy_helper.to_array(t) for t in ours.graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in theirs.graph.initializer}
    for w in {n.input[1] for n in quantizable_nodes(model)}:
        np.testing.assert_array_equal(a[f"{w}_quantized"], b[f"{w}_quantized"])
        np.testing.assert_allclose(a[f"{w}_scale"], b[f"{w}_scale"], rtol=1e-6)
    # Both fold each Relu into the quantizer before it, so the activation ranges are the same ones too.
    for t in activation_tensors(model):
        np.testing.assert_allclose(a[f"{t}_scale"], b[f"{t}_scale"], rtol=1e-6)
        np.testing.assert_array_equal(a[f"{t}_zero_point"], b[f"{t}_zero_point"])
    ref, mine, ort = run(model, feeds), run(ours, feeds), run(theirs, feeds)
    if name == "mlp_matmul":  # they also quantize the bias Add (QLinearAdd), so a few output steps differ
        assert rms(mine - ort) <= 0.03 * rms(ref)
        assert rms(mine - ref) <= 1.5 * rms(ort - ref)
    else:  # the same QDQ graph, up to float32 rounding of a scale
        assert rms(mine - ort) <= 1e-3 * rms(ref)


def test_fuses_into_int8_kernels(case, tmp_path):
    name, _, qdq, feeds = case
    run(qdq, feeds, path=tmp_path / "optimized.onnx")
    optimized = onnx.load(tmp_path / "optimized.onnx")
    constants = {t.name for t in optimized.graph.initializer}
    ops = {n.op_type for n in optimized.graph.node}
    assert not [n.name for n in optimized.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in constants]
    assert FUSED[name] <= ops
    assert not ops & {"MatMul", "Gemm", "Conv"}


def test_layers_chain_in_uint8(case, tmp_path):
    """No float DequantizeLinear -> QuantizeLinear rescale is left between fused layers (the folded Relus)."""
    name, model, qdq, feeds = case
    assert relu_folds(model)
    assert not [n.name for n in qdq.graph.node if n.op_type == "Relu"]
    run(qdq, feeds, path=tmp_path / "optimized.onnx")
    optimized = onnx.load(tmp_path / "optimized.onnx")
    made_by = {out: n for n in optimized.graph.node for out in n.output}
    values = {t.name: numpy_helper.to_array(t).tolist() for t in optimized.graph.initializer}

    def qparams(node):
        return [values.get(t, t) for t in node.input[1:3]]

    for q in (n for n in optimized.graph.node if n.op_type == "QuantizeLinear"):
        src, moved = made_by.get(q.input[0]), False
        while src is not None and src.op_type in DATA_MOVEMENT:
            src, moved = made_by.get(src.input[0]), True
        if src is None:  # quantizes a graph input
            continue
        if name == "mlp_matmul" and src.op_type == "Add":  # its bias Add stays float between DQ and Q
            continue
        # onnxruntime 1.19 leaves DQ -> Flatten -> Q (equal parameters: lossless) in small_cnn; 1.31 drops it.
        assert src.op_type == "DequantizeLinear" and moved and qparams(src) == qparams(q), (q.name, src.op_type)


def test_relu_folds_only_where_it_is_the_sole_reader():
    model = mlp_gemm()
    model.graph.output.append(helper.make_tensor_value_info("h1", onnx.TensorProto.FLOAT, ["N", 32]))  # read outside
    model.graph.node.append(helper.make_node("Relu", ["logits"], ["y"], name="relu3"))
    model.graph.output[0].name = "y"  # a trailing Relu whose output is the graph output
    onnx.checker.check_model(model)
    assert {t: r.name for t, r in relu_folds(model).items()} == {"h2": "relu2", "logits": "relu3"}
    assert activation_tensors(model) == ["x", "h1", "a1", "a2", "y"]
    qdq = quantize(model).model
    onnx.checker.check_model(qdq, full_check=True)
    assert [n.name for n in qdq.graph.node if n.op_type == "Relu"] == ["relu1"]
    assert [o.name for o in qdq.graph.output] == ["y", "h1"]
    feeds = random_inputs(model, 64, seed=99)
    ref, got = make_session(model).run(None, feeds), make_session(qdq).run(None, feeds)
    for r, g in zip(ref, got):
        assert rms(g - r) <= 0.05 * rms(r)
    assert got[0].min() >= 0.0
    # A range reaching below 0 given for a Relu output still quantizes it at zero point 0: the clamp is the Relu.
    zeros = {t.name: numpy_helper.to_array(t) for t in InsertQDQ({t: (-1.0, 1.0) for t in activation_tensors(model)})(
        model).model.graph.initializer if t.name.endswith("_zero_point")}
    assert [zeros[f"{t}_zero_point"] for t in ("x", "h1", "a1", "a2", "y")] == [128, 128, 128, 0, 0]  # a1: Relu kept


def test_valid_and_input_untouched(case):
    name, model, _, _ = case
    before = model.SerializeToString()
    result = quantize(model)
    assert result.modified
    assert model.SerializeToString() == before
    q = result.model
    onnx.checker.check_model(q, full_check=True)
    assert q.ir_version == model.ir_version
    assert [(o.domain, o.version) for o in q.opset_import] == [(o.domain, o.version) for o in model.opset_import]
    assert [o.name for o in q.graph.output] == [o.name for o in model.graph.output]
    assert [i.name for i in q.graph.input] == [i.name for i in model.graph.input]


def test_pruned_zeros_stay_exactly_zero():
    model = mlp_gemm()
    rng = np.random.default_rng(1)
    masks = {}
    for t in model.graph.initializer:
        if t.name.endswith(".weight"):
            w = numpy_helper.to_array(t).copy()
            masks[t.name] = rng.random(w.shape) < 0.8
            masks[t.name][0] = True  # a whole pruned neuron: an all-zero channel needs a usable scale too
            w[masks[t.name]] = 0.0
            t.CopyFrom(numpy_helper.from_array(w, t.name))
    qdq = quantize(model).model
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    for name, mask in masks.items():
        assert np.all(inits[f"{name}_quantized"][mask] == 0)
        assert np.all(np.isfinite(inits[f"{name}_scale"]) & (inits[f"{name}_scale"] > 0))
    # Dequantized by onnxruntime itself: expose each weight's DequantizeLinear output.
    probe = onnx.ModelProto()
    probe.CopyFrom(qdq)
    probe.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in masks)
    values = make_session(probe).run(list(masks), random_inputs(model, 2))
    for (name, mask), w in zip(masks.items(), values):
        assert np.all(w[mask] == 0.0)
    ref, got = run(model, random_inputs(model, 64, seed=99)), run(qdq, random_inputs(model, 64, seed=99))
    assert rms(got - ref) <= 0.05 * rms(ref)


def test_opset_12_is_refused():
    model = mlp_gemm()
    model.opset_import[0].version = 12
    before = model.SerializeToString()
    with pytest.raises(ConfigError, match=r"opset 12.*--quantize none.*opset >= 13"):
        InsertQDQ({t: (-1.0, 1.0) for t in activation_tensors(model)})(model)
    assert model.SerializeToString() == before


def test_missing_range_is_named():
    model = mlp_gemm()
    ranges = {t: (-1.0, 1.0) for t in activation_tensors(model) if t != "a1"}
    with pytest.raises(ConfigError, match="'a1'"):
        InsertQDQ(ranges)(model)


def test_activation_tensors_and_ranges():
    model = mlp_gemm()
    # h1, h2 feed only a Relu: the Relu outputs a1, a2 are quantized in their place.
    assert activation_tensors(model) == ["x", "a1", "a2", "logits"]
    assert activation_tensors(mlp_matmul()) == ["x", "mm1", "a1", "mm2"]  # Relu folded across the bias Add
    assert activation_tensors(small_cnn()) == ["x", "r1", "r2", "flat", "logits"]
    batches = calibration(model, seeds=range(2), n=8)
    ranges = collect_ranges(model, batches, ["x", "a1"])
    xs = np.concatenate([b["x"] for b in batches])
    assert ranges["x"] == (float(xs.min()), float(xs.max()))
    assert ranges["a1"][0] == 0.0 < ranges["a1"][1]  # after Relu


def test_calibration_needs_batches():
    with pytest.raises(DataError, match="no calibration batches"):
        collect_ranges(mlp_gemm(), [], ["x"])


def test_nothing_to_quantize_is_not_modified():
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])], "relu",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
        ),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8,
    )
    result = InsertQDQ({})(model)
    assert not result.modified and result.model.SerializeToString() == model.SerializeToString()
