"""Storage accounting for `inspect` and the report: what each initializer costs now, and what it would cost stored
differently.

What-if columns per tensor of N elements with nnz nonzeros (density d = nnz / N):
  dense fp32 = 4 N, dense int8 = N, sparse int8 = nnz * (1 + 8) with int64 flat indices, nnz * (1 + 4) with int32,
  nnz * (1 + 2) with int16 where N <= 32768 (flat int16 indices cannot address more); "compact" totals take int16
  where it fits and int32 elsewhere.
Index types: onnx.checker accepts only int64 sparse indices; onnxruntime also loads int32 and int16 (FIELD-NOTES).
So int64 is the default of SparsifyInitializers and the compact columns are an opt-in (index_dtype=np.int32): such a
file loads in onnxruntime but fails onnx.checker.check_model. The report says so whenever a file holds them.
Information bound (Shannon): coding which weights are nonzero costs at least N * H(d) bits, with the binary entropy
H(d) = -d log2 d - (1 - d) log2 (1 - d), and each nonzero b bits, so no lossless format of that tensor is smaller than
  bound = N * (d * b + H(d)) / 8 bytes,   here with b = 8 (int8 values).
Totals sum the rows (each tensor coded on its own). With a path, the file's bytes and its gzip size are added: gzip
of dense int8 gets close to the bound without any sparse format (FIELD-NOTES: 1.8-2.3 bytes per nonzero at 90-95 %).
"""

from __future__ import annotations

import gzip
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .sparse import is_external, sparse_bytes

_I16_MAX_ELEMENTS = int(np.iinfo(np.int16).max) + 1  # flat int16 indices address positions 0..32767
CHECKER_NOTE = ("sparse indices stored as {types}: onnxruntime loads them, onnx.checker rejects them "
                "(opt-in compact indices, SparsifyInitializers(index_dtype=...)); int64 is the checker-valid form")

BOUND_BITS = 8
GZIP_LEVEL = 6  # gzip's own default: level 9 is much slower on big models for a few percent
# Packed sub-byte types: numpy's itemsize (1) would overstate them.
_BITS = {"INT4": 4, "UINT4": 4, "FLOAT4E2M1": 4, "INT2": 2, "UINT2": 2}


@dataclass(frozen=True)
class TensorStorage:
    """One initializer. nnz and the columns derived from it are None when the data cannot be read (external data,
    strings)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    storage: str  # "dense" or "sparse"
    numel: int
    nnz: int | None
    sparsity: float | None
    stored_bytes: int
    dense_fp32_bytes: int
    dense_int8_bytes: int
    sparse_int8_i64_bytes: int | None
    sparse_int8_i32_bytes: int | None
    bound_int8_bytes: float | None
    sparse_int8_i16_bytes: int | None = None  # None also where int16 cannot index the tensor
    index_dtype: str | None = None  # of a sparse initializer's indices: INT64 (checker-valid), INT32 or INT16


@dataclass(frozen=True)
class StorageTotals:
    numel: int
    nnz: int
    sparsity: float | None
    stored_bytes: int
    dense_fp32_bytes: int
    dense_int8_bytes: int
    sparse_int8_i64_bytes: int
    sparse_int8_i32_bytes: int
    bound_int8_bytes: float
    sparse_int8_compact_bytes: int = 0  # int16 indices where they fit, int32 elsewhere (not checker-valid)


@dataclass(frozen=True)
class StorageReport:
    rows: tuple[TensorStorage, ...]
    totals: StorageTotals
    file_bytes: int | None = None
    gzip_bytes: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        out = asdict(self)
        for row in out["rows"]:
            row["shape"] = list(row["shape"])
        out["rows"], out["notes"] = list(out["rows"]), list(out["notes"])
        return out


def binary_entropy(d: float) -> float:
    """H(d) in bits; 0 at d = 0 and d = 1."""
    if d <= 0.0 or d >= 1.0:
        return 0.0
    return -d * math.log2(d) - (1.0 - d) * math.log2(1.0 - d)


def information_bound_bytes(numel: int, nnz: int, bits: int = BOUND_BITS) -> float:
    """N * (d * b + H(d)) / 8: the fewest bytes any lossless code of N weights with nnz b-bit nonzeros can take."""
    if numel == 0:
        return 0.0
    d = nnz / numel
    return numel * (d * bits + binary_entropy(d)) / 8


def payload_bytes(tensor: TensorProto) -> int:
    """Bytes of a tensor's data as stored: raw_data if present, else what its element type packs to."""
    if tensor.raw_data:
        return len(tensor.raw_data)
    if is_external(tensor):
        length = {e.key: e.value for e in tensor.external_data}.get("length")
        if length is not None and length.isdigit():
            return int(length)
    if tensor.data_type == TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    return math.ceil(_numel(tensor.dims) * _bits(tensor.data_type) / 8)


def _numel(dims) -> int:
    return math.prod(int(d) for d in dims)


def _bits(data_type: int) -> int:
    name = TensorProto.DataType.Name(data_type) if data_type in TensorProto.DataType.values() else ""
    if name in _BITS:
        return _BITS[name]
    try:
        return 8 * onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize
    except (KeyError, ValueError):
        return 8  # UNDEFINED or a type newer than this onnx: count a byte per element rather than fail a report


def _count_nonzero(tensor: TensorProto) -> int | None:
    """Nonzeros by value (-0.0 counts as zero, as in SparsifyInitializers); None when the data is not readable here."""
    if is_external(tensor) or tensor.data_type == TensorProto.STRING:
        return None  # never follow external-data paths from a report
    try:
        return int(np.count_nonzero(numpy_helper.to_array(tensor)))
    except (ValueError, TypeError):
        return None


def _row(name, dims, data_type, storage, nnz, stored, index_dtype=None) -> TensorStorage:
    numel = _numel(dims)
    known = nnz is not None
    i16_fits = known and numel <= _I16_MAX_ELEMENTS
    return TensorStorage(
        name=name,
        shape=tuple(int(d) for d in dims),
        dtype=TensorProto.DataType.Name(data_type) if data_type in TensorProto.DataType.values() else str(data_type),
        storage=storage,
        numel=numel,
        nnz=nnz,
        sparsity=(1.0 - nnz / numel if numel else 0.0) if known else None,
        stored_bytes=stored,
        dense_fp32_bytes=4 * numel,
        dense_int8_bytes=numel,
        sparse_int8_i64_bytes=sparse_bytes(nnz, 1, 8) if known else None,
        sparse_int8_i32_bytes=sparse_bytes(nnz, 1, 4) if known else None,
        bound_int8_bytes=information_bound_bytes(numel, nnz) if known else None,
        sparse_int8_i16_bytes=sparse_bytes(nnz, 1, 2) if i16_fits else None,
        index_dtype=index_dtype,
    )


def _totals(rows: list[TensorStorage]) -> StorageTotals:
    known = [r for r in rows if r.nnz is not None]
    numel_known = sum(r.numel for r in known)
    nnz = sum(r.nnz for r in known)
    return StorageTotals(
        numel=sum(r.numel for r in rows),
        nnz=nnz,
        sparsity=1.0 - nnz / numel_known if numel_known else None,
        stored_bytes=sum(r.stored_bytes for r in rows),
        dense_fp32_bytes=sum(r.dense_fp32_bytes for r in rows),
        dense_int8_bytes=sum(r.dense_int8_bytes for r in rows),
        sparse_int8_i64_bytes=sum(r.sparse_int8_i64_bytes for r in known),
        sparse_int8_i32_bytes=sum(r.sparse_int8_i32_bytes for r in known),
        bound_int8_bytes=sum(r.bound_int8_bytes for r in known),
        sparse_int8_compact_bytes=sum(_compact(r) for r in known),
    )


def _compact(r: TensorStorage) -> int:
    return r.sparse_int8_i16_bytes if r.sparse_int8_i16_bytes is not None else r.sparse_int8_i32_bytes


def storage_report(model: onnx.ModelProto, path: str | os.PathLike | None = None) -> StorageReport:
    """One row per initializer and sparse initializer (top-level graph), totals, and the file's sizes if `path`."""
    graph = model.graph
    rows = [_row(t.name, t.dims, t.data_type, "dense", _count_nonzero(t), payload_bytes(t)) for t in graph.initializer]
    for s in graph.sparse_initializer:
        # nnz is the values count, read from dims: nothing is expanded, so a malformed file cannot cost memory.
        nnz = _numel(s.values.dims)
        stored = payload_bytes(s.values) + (payload_bytes(s.indices) if s.HasField("indices") else 0)
        index = TensorProto.DataType.Name(s.indices.data_type) if s.HasField("indices") else None
        rows.append(_row(s.values.name, s.dims, s.values.data_type, "sparse", nnz, stored, index))
    notes = []
    compact = sorted({r.index_dtype for r in rows if r.index_dtype not in (None, "INT64")})
    if compact:
        notes.append(CHECKER_NOTE.format(types="/".join(compact)))
    if any(r.nnz is None for r in rows):
        notes.append("nnz unknown for external-data or string tensors; sparse and bound totals exclude them")
    file_bytes = gzip_bytes = None
    if path is not None:
        data = Path(path).read_bytes()
        file_bytes, gzip_bytes = len(data), len(gzip.compress(data, compresslevel=GZIP_LEVEL))
        if any(is_external(t) for t in graph.initializer):
            notes.append("file sizes cover the .onnx file only, not its external data")
    return StorageReport(tuple(rows), _totals(rows), file_bytes, gzip_bytes, tuple(notes))


# ----------------------------------------------------------------------------------------------------- text table


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _pct(x: float | None) -> str:
    return "?" if x is None else f"{100 * x:.1f}%"


_HEADER = ("name", "shape", "dtype", "form", "numel", "nnz", "sparsity", "stored",
           "fp32", "int8", "sp-int8/i64", "sp-int8/i32", "sp-int8/i16", "bound(b=8)")  # fmt: skip


def _cells(r: TensorStorage | StorageTotals, name: str, shape: str, dtype: str, form: str) -> tuple[str, ...]:
    nnz = "?" if r.nnz is None else str(r.nnz)
    # the TOTAL line's i16 column is the compact total: int16 where it fits, int32 elsewhere
    i16 = r.sparse_int8_compact_bytes if isinstance(r, StorageTotals) else r.sparse_int8_i16_bytes
    sizes = [human_bytes(x) for x in (r.stored_bytes, r.dense_fp32_bytes, r.dense_int8_bytes,
                                      r.sparse_int8_i64_bytes, r.sparse_int8_i32_bytes)]
    sizes.append("?" if r.nnz is None else "-" if i16 is None else human_bytes(i16))  # "-": int16 cannot index it
    return (name, shape, dtype, form, str(r.numel), nnz, _pct(r.sparsity), *sizes, human_bytes(r.bound_int8_bytes))


def format_table(report: StorageReport) -> str:
    """Fixed-width table: one line per tensor, a TOTAL line, the file sizes and notes."""
    lines = [_HEADER]
    for r in report.rows:
        form = r.storage if r.index_dtype is None else f"{r.storage}/{r.index_dtype.lower().replace('int', 'i')}"
        lines.append(_cells(r, r.name, "x".join(map(str, r.shape)) or "scalar", r.dtype, form))
    total = _cells(report.totals, f"TOTAL ({len(report.rows)} tensors)", "", "", "")  # i16 column: compact total
    widths = [max(len(row[i]) for row in lines + [total]) for i in range(len(_HEADER))]

    def fmt(row):  # text columns left-aligned, numbers right-aligned
        return "  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    out = [fmt(lines[0]), rule, *map(fmt, lines[1:]), rule, fmt(total)]
    if report.file_bytes is not None:
        out.append(f"file: {human_bytes(report.file_bytes)} on disk, {human_bytes(report.gzip_bytes)} gzip-compressed")
    out.extend(f"note: {n}" for n in report.notes)
    return "\n".join(out)
