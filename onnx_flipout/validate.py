"""Our own check of an untrusted ONNX model, run before onnxruntime ever sees it.

Why: onnxruntime(-training) 1.19.2 trusts the file. FIELD-NOTES measured a 108-byte model with a malformed sparse
initializer making it allocate 6.4 GB or segfault, and external-data locations with `../`, absolute paths and symlinks
being followed. So everything is checked from the protobuf alone, in this order, allocating nothing from untrusted dims
before they pass the budget:
  versions (IR 3..10, ai.onnx opset 7..21) -> nodes (known domains, op types known to onnx's schema registry at the
  declared opset) -> tensors (declared bytes vs `max_bytes`, in-file payload vs dims, external-data location and
  offset/length, sparse initializers via passes/sparse.py) -> the 2 GiB protobuf limit.
`load_external_data` then inlines the checked files, so onnxruntime only ever gets self-contained bytes, never a path.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import ConfigError, ModelError, ModelTooLargeError
from .external_data import check_reference, inline
from .external_data import quote as _q
from .passes.sparse import sparse_to_dense

DEFAULT_MAX_BYTES = 8 * 2**30  # total and per tensor; onnxruntime expands sparse tensors, so their dense size counts
PROTOBUF_LIMIT = 2**31 - 1  # we hand onnxruntime one serialized ModelProto, which protobuf caps at 2 GiB
MIN_IR_VERSION, MAX_IR_VERSION = 3, 10  # IR 3 introduced opset_import; 10 is the newest onnxruntime 1.19.2 loads
MIN_OPSET, MAX_OPSET = 7, 21  # below 7 onnxruntime's kernels and our passes are untested; 21 is 1.19.2's newest
KNOWN_DOMAINS = frozenset({"", "ai.onnx", "com.microsoft", "ai.onnx.ml"})
_SCHEMA_DOMAINS = frozenset({"", "ai.onnx.ml"})  # in onnx's registry; com.microsoft ops are onnxruntime's own
_SUBBYTE_BITS = {"INT4": 4, "UINT4": 4, "FLOAT4E2M1": 4, "INT2": 2, "UINT2": 2}
_UNCHECKED_PAYLOAD = frozenset({"FLOAT6E2M3", "FLOAT6E3M2"})  # packing not pinned down: budget counts a byte each


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n:,} bytes"


def validate_model(model: onnx.ModelProto, origin: str = "model", base_dir: str | os.PathLike | None = None,
                   max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Raise a ModelError (UnsafeModelError, ModelTooLargeError) naming the tensor or node and a remedy.

    `base_dir` is the model's folder, where external data must live; None refuses external data."""
    check_max_bytes(max_bytes)
    _check_versions(model, origin)
    _check_nodes(model, origin)
    external = _check_tensors(model, origin, base_dir, max_bytes)
    if model.ByteSize() + external > PROTOBUF_LIMIT:
        raise ModelTooLargeError(f"{origin}: with its external data the model is over protobuf's 2 GiB limit, and "
                                 "onnx-flipout keeps models in memory as one protobuf; use a smaller model")


def check_max_bytes(max_bytes) -> int:
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
        raise ConfigError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    return max_bytes


def external_locations(model: onnx.ModelProto) -> set[str]:
    """Every external-data location the model names (unchecked): files the caller must never overwrite."""
    return {
        e.value
        for container in _containers(model)
        for _, tensor in _dense_tensors(container)
        if tensor.data_location == TensorProto.EXTERNAL
        for e in tensor.external_data
        if e.key == "location"
    }


# ------------------------------------------------------------------------------------------- versions and nodes


def _check_versions(model: onnx.ModelProto, origin: str) -> None:
    ir = model.ir_version
    if ir > MAX_IR_VERSION:
        raise ModelError(f"{origin}: IR version {ir} is newer than onnxruntime-training 1.19.2 loads "
                         f"(IR <= {MAX_IR_VERSION}); set model.ir_version = {MAX_IR_VERSION} and re-save "
                         f"(its opsets must be <= {MAX_OPSET}), or export with onnx < 1.18")
    if ir < MIN_IR_VERSION:
        raise ModelError(f"{origin}: IR version {ir} is older than {MIN_IR_VERSION} (or unset); "
                         "re-export the model with a current exporter")
    for op in model.opset_import:
        if op.domain not in ("", "ai.onnx"):
            continue
        if op.version > MAX_OPSET:
            raise ModelError(f"{origin}: ai.onnx opset {op.version} is newer than the training runtime supports "
                             f"({MAX_OPSET}); re-export with opset <= {MAX_OPSET}")
        if op.version < MIN_OPSET:
            raise ModelError(f"{origin}: ai.onnx opset {op.version} is older than {MIN_OPSET}; upgrade it with "
                             "onnx.version_converter.convert_version(model, 17) and re-save")


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("g"):
                yield from _graphs(a.g)
            for g in a.graphs:
                yield from _graphs(g)


def _containers(model: onnx.ModelProto) -> Iterator[onnx.GraphProto | onnx.FunctionProto]:
    yield from _graphs(model.graph)
    yield from model.functions  # never runnable here (custom domain), but their tensors could still point anywhere


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return _q(node.name) if node.name else f"#{index} ({_q(node.op_type)})"


def _check_nodes(model: onnx.ModelProto, origin: str) -> None:
    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}
    for graph in _graphs(model.graph):
        for i, node in enumerate(graph.node):
            label = f"node {_node_label(node, i)} (op {_q(node.op_type)})"
            if node.domain not in KNOWN_DOMAINS:
                raise ModelError(
                    f"{origin}: {label} uses the custom domain {_q(node.domain)}; onnxruntime-training runs only "
                    "ai.onnx, ai.onnx.ml and com.microsoft ops. Replace the custom op, or inline model-local "
                    "functions with onnx.inliner.inline_local_functions")
            domain = "" if node.domain == "ai.onnx" else node.domain
            if domain not in _SCHEMA_DOMAINS:
                continue
            if domain not in opsets:
                raise ModelError(f"{origin}: {label} is in domain {domain or 'ai.onnx'!r}, "
                                 "but the model imports no opset for it")
            problem = _schema_problem(node.op_type, domain, opsets[domain])
            if problem:
                raise ModelError(f"{origin}: {label} {problem}")


@functools.lru_cache(maxsize=1024)
def _schema_problem(op_type: str, domain: str, version: int) -> str | None:
    name = domain or "ai.onnx"
    if not onnx.defs.has(op_type, domain):
        return f"is not an operator of {name}; the model was made for another runtime or is corrupt"
    try:
        schema = onnx.defs.get_schema(op_type, version, domain)
    except onnx.defs.SchemaError:
        return f"does not exist yet at {name} opset {version}; re-export with a newer opset (<= {MAX_OPSET})"
    if schema.deprecated:
        return f"is deprecated at {name} opset {version}; re-export the model with a current exporter"
    return None


# ----------------------------------------------------------------------------------------------------- tensors


def _dense_tensors(container) -> Iterator[tuple[str, TensorProto]]:
    """(label, tensor) for initializers and tensor-valued node attributes (Constant values etc.)."""
    for t in getattr(container, "initializer", ()):  # FunctionProto has no initializers
        yield f"initializer {_q(t.name)}", t
    for i, node in enumerate(container.node):
        for a in node.attribute:
            label = f"attribute {_q(a.name)} of node {_node_label(node, i)}"
            if a.HasField("t"):
                yield label, a.t
            for t in a.tensors:
                yield label, t


def _sparse_tensors(container) -> Iterator[onnx.SparseTensorProto]:
    yield from getattr(container, "sparse_initializer", ())
    for node in container.node:
        for a in node.attribute:
            if a.HasField("sparse_tensor"):
                yield a.sparse_tensor
            yield from a.sparse_tensors


def _bits(data_type: int, what: str, origin: str) -> int:
    if data_type not in TensorProto.DataType.values() or data_type == TensorProto.UNDEFINED:
        raise ModelError(f"{origin}: {what} has an unknown data type ({data_type})")
    name = TensorProto.DataType.Name(data_type)
    if name in _SUBBYTE_BITS:
        return _SUBBYTE_BITS[name]
    try:
        return helper.tensor_dtype_to_np_dtype(data_type).itemsize * 8
    except (KeyError, TypeError, ValueError):
        return 8


def _numel(dims, what: str, origin: str) -> int:
    n = 1
    for d in dims:
        if d < 0:
            raise ModelError(f"{origin}: {what} has a negative dimension in {list(dims)}")
        n *= int(d)  # Python ints: an absurd product cannot wrap around to a small number
    return n


def declared_bytes(tensor: TensorProto, what: str, origin: str = "model") -> int:
    """Bytes the tensor needs once loaded, from its dims and type alone (strings: their bytes in the file)."""
    if tensor.data_type == TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    return math.ceil(_numel(tensor.dims, what, origin) * _bits(tensor.data_type, what, origin) / 8)


class _Budget:
    """Declared bytes per tensor and in total against max_bytes, checked before anything is read or allocated."""

    def __init__(self, max_bytes: int, origin: str):
        self.max_bytes, self.origin, self.total = max_bytes, origin, 0

    def take(self, nbytes: int, what: str) -> None:
        remedy = "pass a larger max_bytes if you trust this model and have the memory"
        if nbytes > self.max_bytes:
            raise ModelTooLargeError(f"{self.origin}: {what} declares {_size(nbytes)}, over the memory budget "
                                     f"max_bytes={_size(self.max_bytes)}; {remedy}")
        self.total += nbytes
        if self.total > self.max_bytes:
            raise ModelTooLargeError(f"{self.origin}: its tensors declare more than max_bytes="
                                     f"{_size(self.max_bytes)} in total (passed at {what}); {remedy}")


def _check_tensors(model: onnx.ModelProto, origin: str, base_dir, max_bytes: int) -> int:
    """Every tensor against the budget; in-file payloads against their dims; external references. Returns the
    external bytes that loading will add."""
    budget, external = _Budget(max_bytes, origin), 0
    for container in _containers(model):
        for what, tensor in _dense_tensors(container):
            nbytes = declared_bytes(tensor, what, origin)
            budget.take(nbytes, what)
            if tensor.data_location == TensorProto.EXTERNAL:
                check_reference(tensor, what, nbytes, origin, base_dir)
                external += nbytes
            else:
                _check_payload(tensor, what, nbytes, origin)
        for sparse in _sparse_tensors(container):
            _check_sparse(sparse, origin, budget)
    return external


def _check_payload(tensor: TensorProto, what: str, nbytes: int, origin: str) -> None:
    """The data in the file must match the dims: a tiny file must not declare a huge tensor it does not hold."""
    name = TensorProto.DataType.Name(tensor.data_type)
    if tensor.data_type == TensorProto.STRING or name in _UNCHECKED_PAYLOAD:
        return
    if tensor.HasField("raw_data"):
        got, want, unit = len(tensor.raw_data), nbytes, "bytes"
    else:
        numel = _numel(tensor.dims, what, origin)
        per = 2 if name.startswith("COMPLEX") else 1
        want = math.ceil(numel * _SUBBYTE_BITS[name] / 8) if name in _SUBBYTE_BITS else numel * per
        got, unit = len(getattr(tensor, helper.tensor_dtype_to_field(tensor.data_type))), "values"
    if got != want:
        raise ModelError(f"{origin}: {what} holds {got:,} {unit} but its dims {list(tensor.dims)} "
                         f"({name}) need {want:,}; the file is corrupt or truncated")


def load_external_data(model: onnx.ModelProto, base_dir: str | os.PathLike, origin: str = "model") -> None:
    """Inline the external data that validate_model has checked. Call only after validate_model."""
    for container in _containers(model):
        for what, tensor in _dense_tensors(container):
            if tensor.data_location == TensorProto.EXTERNAL:
                inline(tensor, base_dir, declared_bytes(tensor, what, origin), what, origin)


# ------------------------------------------------------------------------------------------ sparse initializers


def _check_sparse(sparse: onnx.SparseTensorProto, origin: str, budget: _Budget) -> None:
    """Budget for the dense size onnxruntime will allocate, then passes/sparse.py's checks (counts, types, ranges,
    duplicates, external data refused), then ascending order, which the format requires."""
    what = f"sparse initializer {_q(sparse.values.name)}"
    dense_bytes = math.ceil(_numel(sparse.dims, what, origin) * _bits(sparse.values.data_type, what, origin) / 8)
    budget.take(dense_bytes, what)
    try:
        sparse_to_dense(sparse, max_elements=max(1, budget.max_bytes))
    except ModelError as exc:
        raise ModelError(f"{origin}: {exc}") from None
    _check_ascending(sparse, what, origin)


def _check_ascending(sparse: onnx.SparseTensorProto, what: str, origin: str) -> None:
    # sparse_to_dense has validated ranges and shapes, so raveling cannot overflow or fail here.
    if not sparse.HasField("indices"):
        return
    idx = numpy_helper.to_array(sparse.indices).astype(np.int64)
    if idx.ndim != 1 and not sparse.dims:
        return  # a scalar holds at most one value
    flat = idx if idx.ndim == 1 else np.ravel_multi_index(tuple(idx.T), tuple(int(d) for d in sparse.dims))
    if flat.size > 1 and not bool((np.diff(flat) > 0).all()):
        raise ModelError(f"{origin}: {what} is malformed: indices are not in ascending order; "
                         "re-create it with onnx's sparse helpers or store it dense")
