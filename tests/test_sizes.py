"""Storage report additions: int16 what-ifs where they fit, compact totals, and the label on checker-invalid indices."""

from __future__ import annotations

import numpy as np
import onnx
from models import IR_VERSION, OPSET
from onnx import TensorProto, helper, numpy_helper

from onnx_flipout.passes.sizes import format_table, storage_report
from onnx_flipout.passes.sparse import SparsifyInitializers


def two_tensor_model(small: np.ndarray, big: np.ndarray) -> onnx.ModelProto:
    """y = (x @ small) @ big, weights as initializers."""
    nodes = [helper.make_node("MatMul", ["x", "small"], ["h"]), helper.make_node("MatMul", ["h", "big"], ["y"])]
    graph = helper.make_graph(
        nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", small.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", big.shape[1]])],
        [numpy_helper.from_array(small, "small"), numpy_helper.from_array(big, "big")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def pruned(shape, nnz, seed=0):
    a = np.zeros(int(np.prod(shape)), np.float32)
    a[np.random.default_rng(seed).choice(a.size, nnz, replace=False)] = 1.0
    return a.reshape(shape)


def test_int16_what_if_only_where_flat_int16_indices_fit():
    model = two_tensor_model(pruned((128, 256), 100), pruned((256, 200), 300))  # 32768 fits, 51200 does not
    small, big = storage_report(model).rows
    assert (small.sparse_int8_i16_bytes, small.sparse_int8_i32_bytes) == (300, 500)
    assert big.sparse_int8_i16_bytes is None and big.sparse_int8_i32_bytes == 1500
    assert storage_report(model).totals.sparse_int8_compact_bytes == 300 + 1500
    lines = format_table(storage_report(model)).splitlines()
    rows = {line.split()[0]: line for line in lines if line.startswith(("small", "big"))}
    assert "300 B" in rows["small"] and " - " in rows["big"] and " - " not in rows["small"]


def test_compact_indices_are_labelled_as_not_checker_valid(tmp_path):
    model = two_tensor_model(pruned((128, 256), 100), pruned((256, 200), 300))
    default = storage_report(SparsifyInitializers()(model).model)
    assert {r.index_dtype for r in default.rows} == {"INT64"} and not default.notes
    compact = SparsifyInitializers(index_dtype=np.int32)(model).model
    report = storage_report(compact)
    assert {r.index_dtype for r in report.rows} == {"INT32"}
    assert any("onnx.checker rejects" in n and "INT32" in n for n in report.notes)
    text = format_table(report)
    assert "sparse/i32" in text and "onnx.checker rejects" in text
    assert report.to_dict()["rows"][0]["index_dtype"] == "INT32"
