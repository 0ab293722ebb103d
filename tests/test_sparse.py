"""Sparse storage: oracle tests against onnxruntime (outputs must be bit-identical), round trips, malformed files,
and the storage report checked against hand-computed numbers."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from models import IR_VERSION, OPSET, mlp_gemm, random_inputs, small_cnn
from onnx import TensorProto, helper, numpy_helper

from onnx_flipout.errors import ConfigError, ModelError
from onnx_flipout.passes.sizes import format_table, information_bound_bytes, storage_report
from onnx_flipout.passes.sparse import DensifyInitializers, SparsifyInitializers, sparse_bytes

ort.set_default_logger_severity(3)


def prune(model: onnx.ModelProto, fraction: float = 0.9, seed: int = 0) -> onnx.ModelProto:
    """Zero `fraction` of every *.weight at random (np.where, so zeros are +0.0)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rng = np.random.default_rng(seed)
    for t in out.graph.initializer:
        if t.name.endswith("weight"):
            a = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array(np.where(rng.random(a.shape) < fraction, 0, a).astype(a.dtype), t.name))
    return out


def quantized_model(seed: int = 0) -> onnx.ModelProto:
    """y = DQ(int8 W1) applied to x, + DQ(int32 bias), then DQ(uint8 W2): the integer tensors a QDQ model stores."""
    rng = np.random.default_rng(seed)

    def sparse_ints(shape, dtype, lo, hi):
        a = rng.integers(lo, hi, shape).astype(dtype)
        a[rng.random(shape) < 0.9] = 0
        return a

    inits = [
        numpy_helper.from_array(sparse_ints((16, 32), np.int8, -127, 128), "w1_q"),
        numpy_helper.from_array(sparse_ints((32,), np.int32, -1000, 1000), "b1_q"),
        numpy_helper.from_array(sparse_ints((32, 8), np.uint8, 1, 256), "w2_q"),
        numpy_helper.from_array(np.float32(0.02), "s"),
        numpy_helper.from_array(np.int8(0), "zp_i8"),
        numpy_helper.from_array(np.uint8(0), "zp_u8"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["w1_q", "s", "zp_i8"], ["w1"]),
        helper.make_node("DequantizeLinear", ["b1_q", "s"], ["b1"]),
        helper.make_node("DequantizeLinear", ["w2_q", "s", "zp_u8"], ["w2"]),
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("MatMul", ["hb", "w2"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])
    graph = helper.make_graph(nodes, "quantized", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def run_file(model: onnx.ModelProto, path, feeds) -> list[np.ndarray]:
    onnx.save(model, str(path))
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def assert_bit_identical(dense, sparse, tmp_path):
    feeds = random_inputs(dense, n=8)
    ref = run_file(dense, tmp_path / "dense.onnx", feeds)
    got = run_file(sparse, tmp_path / "sparse.onnx", feeds)
    assert [a.tobytes() for a in got] == [a.tobytes() for a in ref]


def sparse_names(model):
    return {s.values.name for s in model.graph.sparse_initializer}


# ----------------------------------------------------------------------------------------------------- Sparsify


@pytest.mark.parametrize("build", [mlp_gemm, small_cnn])
def test_pruned_float_model_shrinks_and_runs_bit_identical(build, tmp_path):
    dense = prune(build())
    result = SparsifyInitializers()(dense)
    assert result.modified
    weights = {t.name for t in dense.graph.initializer if t.name.endswith("weight")}
    assert sparse_names(result.model) == weights  # biases have no zeros: they stay dense
    assert result.model.ByteSize() < dense.ByteSize() / 2
    onnx.checker.check_model(result.model)
    assert_bit_identical(dense, result.model, tmp_path)


def test_int8_uint8_int32_tensors_shrink_and_run_bit_identical(tmp_path):
    dense = quantized_model()
    result = SparsifyInitializers()(dense)
    assert sparse_names(result.model) == {"w1_q", "b1_q", "w2_q"}
    assert {s.values.data_type for s in result.model.graph.sparse_initializer} == {
        TensorProto.INT8, TensorProto.INT32, TensorProto.UINT8}  # fmt: skip
    assert result.model.ByteSize() < dense.ByteSize()
    onnx.checker.check_model(result.model)
    assert_bit_identical(dense, result.model, tmp_path)


def test_sparse_form_is_flat_sorted_int64_indices():
    (sparse,) = SparsifyInitializers()(prune(mlp_gemm((8, 4)))).model.graph.sparse_initializer
    dense = numpy_helper.to_array(initializer(prune(mlp_gemm((8, 4))), "fc1.weight"))
    indices = numpy_helper.to_array(sparse.indices)
    assert sparse.indices.data_type == TensorProto.INT64 and list(sparse.dims) == [4, 8]
    np.testing.assert_array_equal(indices, np.flatnonzero(dense))
    np.testing.assert_array_equal(numpy_helper.to_array(sparse.values), dense.reshape(-1)[indices])


def test_tensor_with_few_zeros_stays_dense():
    model = prune(mlp_gemm(), fraction=0.2)
    result = SparsifyInitializers()(model)
    assert not result.modified
    assert not result.model.graph.sparse_initializer
    assert result.model.SerializeToString() == model.SerializeToString()


def test_names_restrict_candidates():
    result = SparsifyInitializers(names=["fc2.weight"])(prune(mlp_gemm()))
    assert sparse_names(result.model) == {"fc2.weight"}
    with pytest.raises(ConfigError, match="nope"):
        SparsifyInitializers(names=["nope"])(mlp_gemm())


def test_initializer_that_is_also_a_graph_input_stays_dense():
    model = prune(mlp_gemm())
    model.graph.input.append(helper.make_tensor_value_info("fc1.weight", TensorProto.FLOAT, [32, 64]))
    assert sparse_names(SparsifyInitializers()(model).model) == {"fc2.weight", "fc3.weight"}


def test_input_model_is_not_mutated():
    model = prune(small_cnn())
    before = model.SerializeToString()
    sparse = SparsifyInitializers()(model).model
    assert model.SerializeToString() == before
    sparse_before = sparse.SerializeToString()
    DensifyInitializers()(sparse)
    assert sparse.SerializeToString() == sparse_before


@pytest.mark.parametrize("build", [lambda: prune(small_cnn()), quantized_model, lambda: prune(mlp_gemm(), 1.0)])
def test_densify_inverts_sparsify_exactly(build):
    model = build()
    back = DensifyInitializers()(SparsifyInitializers()(model).model)
    assert back.modified and not back.model.graph.sparse_initializer
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    restored = {t.name: numpy_helper.to_array(t) for t in back.model.graph.initializer}
    assert original.keys() == restored.keys()
    for name, a in original.items():
        assert restored[name].dtype == a.dtype and restored[name].tobytes() == a.tobytes(), name


def test_negative_zero_counts_as_zero_and_reloads_as_positive_zero():
    w = np.array([[-0.0, 1.0, 0.0, -0.0, 0.0, 0.0, 0.0, 0.0]], np.float32)
    model = one_tensor_model(w)
    (sparse,) = SparsifyInitializers()(model).model.graph.sparse_initializer
    assert numpy_helper.to_array(sparse.values).tolist() == [1.0]
    dense = numpy_helper.to_array(DensifyInitializers()(SparsifyInitializers()(model).model).model.graph.initializer[0])
    assert not np.signbit(dense).any()


def test_int32_indices_are_opt_in_and_rejected_by_checker(tmp_path):
    dense = prune(mlp_gemm())
    sparse = SparsifyInitializers(index_dtype=np.int32)(dense).model
    assert {s.indices.data_type for s in sparse.graph.sparse_initializer} == {TensorProto.INT32}
    assert sparse.ByteSize() < SparsifyInitializers()(dense).model.ByteSize()
    with pytest.raises(onnx.checker.ValidationError, match="INT64"):
        onnx.checker.check_model(sparse)
    assert_bit_identical(dense, sparse, tmp_path)
    with pytest.raises(ConfigError, match="uint32"):
        SparsifyInitializers(index_dtype=np.uint32)


def test_old_ir_version_is_refused_with_a_remedy():
    model = prune(mlp_gemm())
    model.ir_version = 5
    with pytest.raises(ModelError, match="IR version 5"):
        SparsifyInitializers()(model)


# ----------------------------------------------------------------------------------------------------- Densify


def initializer(model, name):
    return next(t for t in model.graph.initializer if t.name == name)


def add_model(name: str, shape, initializers=(), sparse_initializers=()) -> onnx.ModelProto:
    """y = x + <initializer `name`>: the smallest graph that reads one tensor."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))
    graph = helper.make_graph([helper.make_node("Add", ["x", name], ["y"])], "one", [x], [y], list(initializers),
                              sparse_initializer=list(sparse_initializers))  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def one_tensor_model(w: np.ndarray, name: str = "w") -> onnx.ModelProto:
    return add_model(name, w.shape, [numpy_helper.from_array(w, name)])


def sparse_model(values, indices, dims, name="w") -> onnx.ModelProto:
    """A one-Add model whose only initializer is the given (possibly malformed) sparse tensor."""
    sparse = onnx.SparseTensorProto()
    sparse.values.CopyFrom(numpy_helper.from_array(np.asarray(values, np.float32), name))
    if indices is not None:
        sparse.indices.CopyFrom(numpy_helper.from_array(np.asarray(indices, np.int64)))
    sparse.dims.extend(dims)
    return add_model(name, ["N"] * len(dims), sparse_initializers=[sparse])


def test_coordinate_indices_densify():
    model = sparse_model([5.0, 7.0], [[0, 1], [2, 0]], [3, 2])
    (t,) = DensifyInitializers()(model).model.graph.initializer
    np.testing.assert_array_equal(numpy_helper.to_array(t), [[0, 5], [0, 0], [7, 0]])


@pytest.mark.parametrize(
    ("values", "indices", "dims", "message"),
    [
        ([1.0, 2.0], [0, 6], [2, 3], "out of range"),
        ([1.0, 2.0], [0, -1], [2, 3], "out of range"),
        ([1.0, 2.0], [[0, 0], [2, 0]], [2, 3], "out of range"),
        ([1.0, 2.0, 3.0], [0, 1], [2, 3], "expected"),
        ([1.0], [[0, 0, 0]], [2, 3], "expected"),
        ([1.0, 2.0], [4, 4], [2, 3], "duplicates"),
        ([1.0], [0], [2**40, 2**40], "max_elements"),
        ([1.0], [0], [2, -3], "negative"),
        ([1.0], None, [2, 3], "no indices"),
    ],
)
def test_malformed_sparse_initializer_raises_model_error_naming_it(values, indices, dims, message):
    model = sparse_model(values, indices, dims, name="layer7.weight")
    before = model.SerializeToString()
    with pytest.raises(ModelError, match=message) as info:
        DensifyInitializers()(model)
    assert "layer7.weight" in str(info.value)
    assert model.SerializeToString() == before


def test_values_that_do_not_match_their_dims_raise():
    model = sparse_model([1.0, 2.0], [0, 1], [2, 3])
    model.graph.sparse_initializer[0].values.dims[0] = 1000
    with pytest.raises(ModelError, match="'w'.*does not match"):
        DensifyInitializers()(model)


def test_max_elements_is_a_configurable_limit():
    model = sparse_model([1.0], [0], [100, 100])
    with pytest.raises(ModelError, match="max_elements=1000"):
        DensifyInitializers(max_elements=1000)(model)
    assert DensifyInitializers(max_elements=10_000)(model).modified
    with pytest.raises(ConfigError):
        DensifyInitializers(max_elements=0)


def test_densify_without_sparse_initializers_is_a_no_op():
    assert not DensifyInitializers()(mlp_gemm()).modified


# ----------------------------------------------------------------------------------------------------- sizes


def test_storage_report_matches_hand_computed_numbers(tmp_path):
    w = np.zeros((4, 5), np.float32)
    w.flat[[0, 3, 7, 12, 19]] = [1, 2, 3, 4, 5]  # 5 of 20 nonzero: d = 0.25
    model = one_tensor_model(w)
    (row,) = storage_report(model).rows
    h = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))  # 0.8113 bits
    assert (row.name, row.shape, row.dtype, row.storage) == ("w", (4, 5), "FLOAT", "dense")
    assert (row.numel, row.nnz, row.sparsity) == (20, 5, 0.75)
    assert (row.stored_bytes, row.dense_fp32_bytes, row.dense_int8_bytes) == (80, 80, 20)
    assert (row.sparse_int8_i64_bytes, row.sparse_int8_i32_bytes) == (45, 25)
    assert row.bound_int8_bytes == pytest.approx(20 * (0.25 * 8 + h) / 8) == pytest.approx(7.0282, abs=1e-4)

    sparse = SparsifyInitializers()(model).model
    path = tmp_path / "m.onnx"
    onnx.save(sparse, str(path))
    report = storage_report(sparse, path)
    (row,) = report.rows
    assert (row.storage, row.nnz, row.stored_bytes) == ("sparse", 5, 5 * 4 + 5 * 8)
    assert report.totals.stored_bytes == 60 and report.totals.nnz == 5
    assert report.file_bytes == len(path.read_bytes())
    assert report.gzip_bytes == len(gzip.compress(path.read_bytes(), compresslevel=6))


def test_helpers_match_the_formulas():
    assert sparse_bytes(10, 1, 8) == 90 and sparse_bytes(10, 4, 4) == 80
    assert information_bound_bytes(100, 0) == 0 and information_bound_bytes(100, 100) == 100
    assert information_bound_bytes(8, 4) == pytest.approx(8 * (0.5 * 8 + 1) / 8)


def test_format_table_and_dict_cover_every_tensor():
    model = SparsifyInitializers()(prune(mlp_gemm())).model
    report = storage_report(model)
    text = format_table(report)
    for t in list(model.graph.initializer) + [s.values for s in model.graph.sparse_initializer]:
        assert t.name in text
    assert "TOTAL (6 tensors)" in text and "sparse" in text and "KiB" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert len(data["rows"]) == 6 and data["totals"]["numel"] == sum(r["numel"] for r in data["rows"])
