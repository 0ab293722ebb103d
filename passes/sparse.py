"""Sparse storage of initializers: shrink the file, not the runtime.

onnxruntime expands every `sparse_initializer` to a dense tensor when the model loads (FIELD-NOTES), so storing a
pruned weight sparse saves disk and download bytes only; memory and speed are unchanged and outputs are identical.

Format (onnx.proto, SparseTensorProto): `values` is a rank-1 tensor [NNZ] that carries the initializer's name,
`indices` holds the positions of the values either as flat linear indices [NNZ] or coordinates [NNZ, rank], in
ascending order without duplicates, and `dims` is the dense shape. Storage per nonzero is the value's bytes plus the
index's bytes, so a tensor pays off only when more than itemsize / (itemsize + index itemsize) of it is zero
(e.g. 1/3 zeros for float32 values with int64 indices, 8/9 for int8 values).

onnxruntime.quantization and most tools read only `graph.initializer`: run `DensifyInitializers` at the door and
`SparsifyInitializers` as the last step before writing.

Index types: int64 (the default) is the only one onnx.checker accepts. int32 / int16 indices are an opt-in
(`SparsifyInitializers(index_dtype=np.int32)`): onnxruntime 1.19.2 and 1.31.1 load them and the file shrinks
(int8 values: 5 instead of 9 bytes per nonzero), but onnx.checker.check_model rejects the file, so check the model
before this pass and verify the written file by loading it in onnxruntime. passes.sizes labels such files.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, numpy_helper

from onnx_flipout.errors import ConfigError, ModelError

from .base import Pass, PassResult
from .graph import graph_input_names

MIN_SPARSE_IR_VERSION = 6  # IR 6 (2019) introduced sparse_initializer
DEFAULT_MAX_ELEMENTS = 2**31

# Dtypes whose zero is the all-zero bit pattern and that onnxruntime loads sparse. Sub-byte types (int4) fail to
# load in onnxruntime 1.19.2 and 1.31.1 (FIELD-NOTES); float8 types have odd zero/NaN encodings.
_VALUE_TYPES = frozenset(
    {
        TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16,
        TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16,
        TensorProto.INT32, TensorProto.UINT32, TensorProto.INT64, TensorProto.UINT64,
    }
)  # fmt: skip
# onnxruntime loads signed int64/int32/int16 indices; onnx.checker accepts only int64; unsigned ones fail to load.
_INDEX_TYPES = (np.dtype(np.int64), np.dtype(np.int32), np.dtype(np.int16))
_INTEGER_TYPES = frozenset(
    {
        TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16,
        TensorProto.INT32, TensorProto.UINT32, TensorProto.INT64, TensorProto.UINT64,
    }
)  # fmt: skip


def sparse_bytes(nnz: int, value_itemsize: int, index_itemsize: int, index_rank: int = 1) -> int:
    """Payload bytes of a sparse tensor: every nonzero stores its value and `index_rank` indices."""
    return nnz * (value_itemsize + index_rank * index_itemsize)


def is_external(tensor: TensorProto) -> bool:
    return tensor.data_location == TensorProto.EXTERNAL


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


# ----------------------------------------------------------------------------------------------------- dense -> sparse


def dense_to_sparse(tensor: TensorProto, index_dtype: npt.DTypeLike = np.int64) -> onnx.SparseTensorProto:
    """Flat-index sparse form of a dense tensor. Zeros compare by value: -0.0 is dropped and reloads as +0.0."""
    return _from_array(tensor, numpy_helper.to_array(tensor), np.dtype(index_dtype))


def _from_array(tensor: TensorProto, array: np.ndarray, index_dtype: np.dtype) -> onnx.SparseTensorProto:
    flat = array.reshape(-1)
    positions = np.flatnonzero(flat)  # ascending, as the format requires
    values = numpy_helper.from_array(flat[positions], tensor.name)
    values.doc_string = tensor.doc_string
    sparse = onnx.SparseTensorProto()
    sparse.values.CopyFrom(values)
    # An empty [0] indices tensor (all zeros) is valid and keeps readers that expect the field simple.
    sparse.indices.CopyFrom(numpy_helper.from_array(positions.astype(index_dtype)))
    sparse.dims.extend(tensor.dims)
    return sparse


class SparsifyInitializers(Pass):
    """Move initializers that are smaller as SparseTensorProto (flat indices) to `graph.sparse_initializer`.

    `names` restricts the candidates; an initializer that is also a graph input (a default the caller may
    override) is never moved. A tensor moves only when its serialized sparse form is strictly smaller. Supported
    values: float32/64/16 and 8- to 64-bit integers (int8/uint8 weights after quantization included).

    `index_dtype`: np.int64 (default) is the only type onnx.checker accepts. np.int32 and np.int16 are an opt-in:
    loadable by onnxruntime, rejected by onnx.checker; a tensor with more elements than the type can index stays dense.

    Top-level graph only. Outputs are bit-identical in onnxruntime except that a -0.0 weight reloads as +0.0.
    """

    def __init__(self, names: Iterable[str] | None = None, index_dtype: npt.DTypeLike = np.int64):
        self.names = None if names is None else frozenset(names)
        self.index_dtype = np.dtype(index_dtype)
        if self.index_dtype not in _INDEX_TYPES:
            allowed = ", ".join(str(d) for d in _INDEX_TYPES)
            raise ConfigError(f"index_dtype {self.index_dtype} is not supported: use one of {allowed}")

    def call(self, model: onnx.ModelProto) -> PassResult:
        out = _copy(model)
        graph = out.graph
        self._check_names(out)
        candidates = {t.name for t in graph.initializer} - graph_input_names(out)
        if self.names is not None:
            candidates &= self.names
        keep, moved = [], []
        for tensor in graph.initializer:
            sparse = self._sparse_if_smaller(tensor) if tensor.name in candidates else None
            if sparse is None:
                keep.append(tensor)
            else:
                moved.append(sparse)
        if not moved:
            return PassResult(out, False)
        if out.ir_version < MIN_SPARSE_IR_VERSION:
            raise ModelError(
                f"model IR version {out.ir_version} predates sparse initializers (IR >= {MIN_SPARSE_IR_VERSION}); "
                "convert the model to a newer IR version first, or keep it dense"
            )
        del graph.initializer[:]
        graph.initializer.extend(keep)
        graph.sparse_initializer.extend(moved)
        return PassResult(out, True)

    def _check_names(self, model: onnx.ModelProto) -> None:
        if self.names is None:
            return
        known = {t.name for t in model.graph.initializer} | {s.values.name for s in model.graph.sparse_initializer}
        missing = sorted(self.names - known)
        if missing:
            raise ConfigError(f"no initializer named {', '.join(map(repr, missing))} in the model")

    def _sparse_if_smaller(self, tensor: TensorProto) -> onnx.SparseTensorProto | None:
        dims = [int(d) for d in tensor.dims]
        # The checker wants a dense rank > 0 and positive dims; external data stays where the user put it.
        if tensor.data_type not in _VALUE_TYPES or is_external(tensor) or not dims or min(dims) <= 0:
            return None
        if math.prod(dims) - 1 > np.iinfo(self.index_dtype).max:
            return None  # e.g. int16 indices cannot address this tensor
        try:
            array = numpy_helper.to_array(tensor)
        except (ValueError, TypeError) as exc:
            raise ModelError(f"initializer {tensor.name!r}: data does not match dims {dims} ({exc})") from exc
        nnz = int(np.count_nonzero(array))
        if sparse_bytes(nnz, array.itemsize, self.index_dtype.itemsize) >= array.nbytes:
            return None  # cheap payload test first; the exact test below needs the proto built
        sparse = _from_array(tensor, array, self.index_dtype)
        return sparse if sparse.ByteSize() < tensor.ByteSize() else None


# ----------------------------------------------------------------------------------------------------- sparse -> dense


def _type_name(data_type: int) -> str:
    return TensorProto.DataType.Name(data_type) if data_type in TensorProto.DataType.values() else str(data_type)


def _fail(name: str, why: str) -> ModelError:
    return ModelError(f"sparse initializer {name!r} is malformed: {why}")


def _checked_numel(dims, name: str, what: str, max_elements: int) -> int:
    """Element count of `dims`, refusing negative dims or counts over max_elements before anything is allocated."""
    numel = 1
    for d in dims:
        if d < 0:
            raise _fail(name, f"{what} has a negative dimension {list(dims)}")
        numel *= int(d)  # Python ints: an absurd product cannot overflow into a small number
    if numel > max_elements:
        raise _fail(name, f"{what} {list(dims)} claims {numel} elements, more than max_elements={max_elements}")
    return numel


def _read(tensor: TensorProto, name: str, what: str, allowed: frozenset, max_elements: int) -> np.ndarray:
    if tensor.data_type not in allowed:
        raise _fail(name, f"{what} have unsupported type {_type_name(tensor.data_type)}")
    if is_external(tensor):
        raise _fail(name, f"{what} are stored as external data, which sparse initializers do not support here")
    _checked_numel(tensor.dims, name, what, max_elements)
    try:
        return numpy_helper.to_array(tensor)
    except (ValueError, TypeError) as exc:
        raise _fail(name, f"{what} data does not match dims {list(tensor.dims)} ({exc})") from exc


def _linear_indices(indices: np.ndarray, shape: tuple[int, ...], nnz: int, name: str) -> np.ndarray:
    """Validated flat positions from the [NNZ] or [NNZ, rank] index form."""
    idx = indices.astype(np.int64)  # uint64 beyond int64 wraps negative and fails the range check below
    numel = int(np.prod(shape, dtype=np.int64))
    if idx.ndim == 1 and idx.shape[0] == nnz:
        bad = np.flatnonzero((idx < 0) | (idx >= numel))
        if bad.size:
            raise _fail(name, f"index {idx[bad[0]]} at position {bad[0]} is out of range [0, {numel})")
        flat = idx
    elif idx.ndim == 2 and idx.shape == (nnz, len(shape)):
        bad = np.argwhere((idx < 0) | (idx >= np.asarray(shape, dtype=np.int64)))
        if bad.size:
            raise _fail(name, f"index at position {tuple(bad[0])} is out of range for shape {list(shape)}")
        strides = np.cumprod((shape[1:] + (1,))[::-1], dtype=np.int64)[::-1]
        flat = idx @ strides if len(shape) else np.zeros(nnz, np.int64)
    else:
        expected = f"[{nnz}] or [{nnz}, {len(shape)}]"
        raise _fail(name, f"indices have shape {list(idx.shape)}; expected {expected} for {nnz} values")
    if np.unique(flat).size != flat.size:
        raise _fail(name, "indices contain duplicates")
    return flat


def sparse_to_dense(sparse: onnx.SparseTensorProto, max_elements: int = DEFAULT_MAX_ELEMENTS) -> TensorProto:
    """The dense TensorProto of a sparse initializer, validating everything an untrusted file could get wrong."""
    name = sparse.values.name
    if not name:
        raise ModelError("a sparse initializer has no name (values.name is empty)")
    shape = tuple(int(d) for d in sparse.dims)
    numel = _checked_numel(shape, name, "dense shape", max_elements)
    values = _read(sparse.values, name, "values", _VALUE_TYPES | {TensorProto.BOOL}, max_elements)
    if values.ndim != 1:
        raise _fail(name, f"values must have rank 1, got shape {list(values.shape)}")
    if sparse.HasField("indices"):
        indices = _read(sparse.indices, name, "indices", _INTEGER_TYPES, max_elements)
    elif values.size == 0:
        indices = np.zeros(0, np.int64)
    else:
        raise _fail(name, f"{values.size} values but no indices")
    flat = _linear_indices(indices, shape, values.size, name)
    dense = np.zeros(numel, dtype=values.dtype)
    dense[flat] = values
    tensor = numpy_helper.from_array(dense.reshape(shape), name)
    tensor.doc_string = sparse.values.doc_string
    return tensor


class DensifyInitializers(Pass):
    """Turn every sparse_initializer into a dense initializer, validating it (ModelError names the tensor).

    Run it on models that arrive with sparse initializers: onnxruntime.quantization and many tools read only
    `graph.initializer`. `max_elements` bounds the dense size a file may claim, so a tiny malformed file cannot
    make us allocate gigabytes.
    """

    def __init__(self, max_elements: int = DEFAULT_MAX_ELEMENTS):
        if not isinstance(max_elements, int) or not 0 < max_elements <= 2**62:
            raise ConfigError(f"max_elements must be an integer in [1, 2**62], got {max_elements!r}")
        self.max_elements = max_elements

    def call(self, model: onnx.ModelProto) -> PassResult:
        out = _copy(model)
        graph = out.graph
        if not graph.sparse_initializer:
            return PassResult(out, False)
        taken = {t.name for t in graph.initializer}
        dense = []
        for sparse in graph.sparse_initializer:
            tensor = sparse_to_dense(sparse, self.max_elements)
            if tensor.name in taken:
                raise ModelError(f"sparse initializer {tensor.name!r} has the same name as another initializer")
            taken.add(tensor.name)
            dense.append(tensor)
        del graph.sparse_initializer[:]
        graph.initializer.extend(dense)
        return PassResult(out, True)
