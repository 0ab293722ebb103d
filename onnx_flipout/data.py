"""Training and evaluation data: arrays named after the model's inputs (first axis = samples), optional labels.

Sources: an .npz file, a bare .npy file (one array, for a model with one input), a dict of arrays, or an iterable of
feed dicts (concatenated). Files are read without pickle, and each array's .npy header (shape, dtype) is checked
against `max_bytes` and against the bytes actually there before numpy allocates anything: a 200-byte compressed member
may declare a 100 GB array. Everything is checked against the model before any training or calibration starts.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Mapping, Union

import numpy as np
import onnx

from .errors import DataError
from .validate import DEFAULT_MAX_BYTES, check_max_bytes

DataSource = Union[str, os.PathLike, Mapping[str, np.ndarray], Iterable[Mapping[str, np.ndarray]], "Dataset"]

BARE_ARRAY = "<.npy array>"  # the one array of a bare .npy file; conform() names it after the model's only input
_NPY_MAGIC = b"\x93NUMPY"
_FILE_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, RuntimeError, NotImplementedError)


@dataclass
class Dataset:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    origin: str = "data"

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, idx: np.ndarray) -> "Dataset":
        labels = None if self.labels is None else self.labels[idx]
        return Dataset({k: v[idx] for k, v in self.inputs.items()}, labels, self.origin)

    def batches(self, batch_size: int, limit: int | None = None):
        n = len(self) if limit is None else min(limit, len(self))
        for i in range(0, n, batch_size):
            yield {k: v[i : min(i + batch_size, n)] for k, v in self.inputs.items()}


def load(source: DataSource, labels: str | None = None, what: str = "data", require_labels: bool = True,
         max_bytes: int = DEFAULT_MAX_BYTES) -> Dataset:
    """A Dataset from a path, a dict of arrays, an iterable of feed dicts, or a Dataset.

    With require_labels=False a missing labels array is allowed (the Dataset then has no labels). `max_bytes` bounds
    what a file may make us allocate (checked from the headers before reading)."""
    if isinstance(source, Dataset):
        return source
    check_max_bytes(max_bytes)
    if isinstance(source, (str, os.PathLike)):
        arrays, origin = _read_file(Path(source), max_bytes), str(source)
    elif isinstance(source, Mapping):
        arrays, origin = _as_arrays(source, what), what
    else:
        arrays, origin = _concat_feeds(source, what), what
    if labels is not None and labels not in arrays and require_labels:
        if BARE_ARRAY in arrays:
            raise DataError(f"{origin}: a .npy file holds one array, so it has no labels {labels!r}; "
                            "save inputs and labels together with numpy.savez")
        raise DataError(f"{origin}: no array named {labels!r} for the labels (arrays: {', '.join(sorted(arrays))})")
    y = arrays.pop(labels, None) if labels is not None else None
    if not arrays:
        raise DataError(f"{origin}: holds no input arrays")
    return Dataset(arrays, y, origin)


# ------------------------------------------------------------------------------------------------------- files


def _read_file(path: Path, max_bytes: int) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_NPY_MAGIC))
            if magic == _NPY_MAGIC:
                f.seek(0)
                return {BARE_ARRAY: _read_npy(f, os.fstat(f.fileno()).st_size, max_bytes, str(path))}
        if magic.startswith(b"PK"):
            return _read_npz(path, max_bytes)
    except _FILE_ERRORS as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: not a readable .npz/.npy file ({why})") from None
    raise DataError(f"{path}: not an .npz or .npy file (pickles and other formats are refused); "
                    "save the arrays with numpy.savez")


def _read_npz(path: Path, max_bytes: int) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        keys = [i.filename[:-4] if i.filename.endswith(".npy") else i.filename for i in infos]
        if len(set(keys)) != len(keys):
            raise DataError(f"{path}: holds two arrays with the same name; re-save it with numpy.savez")
        total = sum(i.file_size for i in infos)  # the zip directory's uncompressed sizes, before inflating anything
        if total > max_bytes:
            raise DataError(f"{path}: unpacks to {total:,} bytes, over max_bytes={max_bytes:,}; "
                            "pass a larger max_bytes if you have the memory")
        arrays = {}
        for key, info in zip(keys, infos):
            with zf.open(info) as member:
                arrays[key] = _read_npy(member, info.file_size, max_bytes, f"{path}: array {key!r}")
        return arrays


def _read_npy(f: IO[bytes], available: int, max_bytes: int, where: str) -> np.ndarray:
    """One .npy stream whose header has been checked against max_bytes and the `available` bytes first."""
    start = f.tell()
    version = np.lib.format.read_magic(f)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise DataError(f"{where}: .npy format version {version} is not supported; save plain arrays with numpy")
    shape, _, dtype = readers[version](f)
    if dtype.hasobject:
        raise DataError(f"{where}: holds Python objects (reading them would unpickle code); save numeric arrays")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > max_bytes:
        raise DataError(f"{where}: declares shape {shape} {dtype} = {nbytes:,} bytes, over max_bytes={max_bytes:,}")
    if nbytes > available - (f.tell() - start):
        raise DataError(f"{where}: declares shape {shape} {dtype} but holds fewer bytes; the file is truncated")
    f.seek(start)
    return np.lib.format.read_array(f, allow_pickle=False)


# ------------------------------------------------------------------------------------------- in-memory sources


def _as_arrays(source: Mapping, what: str) -> dict[str, np.ndarray]:
    arrays = {}
    for k, v in source.items():
        try:
            arrays[k] = np.asarray(v)
        except (ValueError, TypeError) as exc:
            raise DataError(f"{what}: {k!r} is not an array ({exc})") from None
    return arrays


def _concat_feeds(feeds: Iterable[Mapping[str, np.ndarray]], what: str) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    try:
        for feed in feeds:
            if not isinstance(feed, Mapping):
                raise DataError(f"{what}: expected dicts of arrays named after the model inputs, "
                                f"got {type(feed).__name__}")
            for k, v in _as_arrays(feed, what).items():
                parts.setdefault(k, []).append(v)
    except TypeError:
        raise DataError(f"{what}: expected an .npz path, a dict of arrays or an iterable of feed dicts") from None
    if not parts:
        raise DataError(f"{what}: the iterable of feed dicts is empty")
    out = {}
    for k, v in parts.items():
        try:
            out[k] = np.concatenate(v)
        except ValueError as exc:
            raise DataError(f"{what}: the feed dicts disagree on the shape of {k!r} ({exc})") from None
    return out


# -------------------------------------------------------------------------------------------- against the model


def conform(ds: Dataset, model: onnx.ModelProto, labels_key: str | None = None,
            output_name: str | None = None) -> Dataset:
    """Check ds against the model's inputs and cast to their dtypes; raise DataError naming what is wrong.

    Labels are checked against the number of classes (the static last dim of `output_name`, or of the only output)."""
    inits = {t.name for t in model.graph.initializer}
    specs = {vi.name: vi for vi in model.graph.input if vi.name not in inits}
    ds = _name_bare_array(ds, specs)
    missing = [n for n in specs if n not in ds.inputs]
    if missing:
        raise DataError(
            f"{ds.origin}: missing model input(s) {', '.join(missing)}; it has {', '.join(sorted(ds.inputs))}. "
            "Name the arrays after the model's inputs (see `onnx-flipout inspect MODEL`)."
        )
    extra = [n for n in ds.inputs if n not in specs]
    if extra:
        hint = f" If {extra[0]!r} holds the labels, pass --labels {extra[0]}." if labels_key is None else ""
        raise DataError(f"{ds.origin}: array(s) {', '.join(extra)} are not inputs of the model.{hint}")
    out = {name: _conform_array(ds.origin, name, ds.inputs[name], specs[name]) for name in specs}
    labels = None if ds.labels is None else _conform_labels(ds.origin, ds.labels, _classes(model, output_name))
    lengths = {len(v) for v in out.values()} | ({len(labels)} if labels is not None else set())
    if len(lengths) != 1:
        raise DataError(f"{ds.origin}: arrays disagree on the number of samples ({sorted(lengths)})")
    if lengths == {0}:
        raise DataError(f"{ds.origin}: holds no samples")
    return Dataset(out, labels, ds.origin)


def _name_bare_array(ds: Dataset, specs: dict) -> Dataset:
    """A bare .npy array becomes the model's input when the model has exactly one."""
    if list(ds.inputs) != [BARE_ARRAY]:
        return ds
    if len(specs) != 1:
        raise DataError(f"{ds.origin}: a .npy file holds one array, but the model has {len(specs)} inputs "
                        f"({', '.join(specs)}); save an .npz with arrays named after them")
    return Dataset({next(iter(specs)): ds.inputs[BARE_ARRAY]}, ds.labels, ds.origin)


def _conform_array(origin: str, name: str, arr: np.ndarray, spec: onnx.ValueInfoProto) -> np.ndarray:
    tt = spec.type.tensor_type
    if not spec.type.HasField("tensor_type") or tt.elem_type == onnx.TensorProto.STRING:
        raise DataError(f"{origin}: model input {name!r} is not a numeric tensor, which onnx-flipout cannot feed")
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    if arr.dtype.kind not in "fiub":
        raise DataError(f"{origin}: input {name!r} has dtype {arr.dtype}, the model wants {dtype}")
    if arr.ndim == 0:
        raise DataError(f"{origin}: input {name!r} is a single value; its first axis must be the samples")
    if dims and arr.ndim != len(dims):
        raise DataError(f"{origin}: input {name!r} has shape {arr.shape}, the model wants rank {len(dims)} {dims}")
    for axis, (want, got) in enumerate(zip(dims[1:], arr.shape[1:]), start=1):
        if want is not None and want != got:
            raise DataError(f"{origin}: input {name!r} has shape {arr.shape}, the model wants {dims} (axis {axis})")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise DataError(f"{origin}: input {name!r} contains NaN or Inf")
    if dtype.kind in "iub":
        _check_integral(origin, name, arr, dtype)
    out = np.ascontiguousarray(arr, dtype=dtype)
    if dtype.kind == "f" and not np.isfinite(out).all():  # e.g. 1e6 does not fit float16
        raise DataError(f"{origin}: input {name!r} has values too large for the model's {dtype}")
    return out


def _check_integral(origin: str, name: str, arr: np.ndarray, dtype: np.dtype) -> None:
    """Casting must not silently change values: no fractions into integer inputs, nothing out of range."""
    if arr.size == 0:
        return
    if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
        raise DataError(f"{origin}: input {name!r} holds fractional values, the model wants {dtype}")
    lo, hi = (0, 1) if dtype.kind == "b" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
    if arr.min() < lo or arr.max() > hi:
        raise DataError(f"{origin}: input {name!r} has values in [{arr.min()}, {arr.max()}], outside what the "
                        f"model's {dtype} holds ([{lo}, {hi}])")


def _classes(model: onnx.ModelProto, output_name: str | None) -> tuple[str, int] | None:
    """(output, classes) from the static last dim of a rank >= 2 output; None when unknown. With several outputs
    and no output_name the trained one is not known here, so nothing is checked."""
    outputs = list(model.graph.output)
    if output_name is None and len(outputs) != 1:
        return None
    out = next((o for o in outputs if output_name in (None, o.name)), None)
    dims = out.type.tensor_type.shape.dim if out is not None else []
    if len(dims) < 2 or not dims[-1].HasField("dim_value") or dims[-1].dim_value < 1:
        return None
    return out.name, int(dims[-1].dim_value)


def _conform_labels(origin: str, y: np.ndarray, classes: tuple[str, int] | None) -> np.ndarray:
    if y.ndim != 1:
        raise DataError(f"{origin}: labels must be one class index per sample (shape [N]), got shape {y.shape}")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise DataError(f"{origin}: labels contain NaN or Inf")
    if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
        raise DataError(f"{origin}: labels must be integer class indices, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise DataError(f"{origin}: labels must be >= 0 (sample {int(np.argmin(y))} has {y.min()})")
    limit = classes[1] if classes else 2**31  # without a known class count: at least no int64 overflow
    if y.size and y.max() >= limit:
        i = int(np.argmax(y))
        where = (f"the model's {classes[1]} classes (output {classes[0]!r}); labels must be in [0, {classes[1]})"
                 if classes else "any plausible class count")
        raise DataError(f"{origin}: label {y[i]} (sample {i}) is out of range for {where}")
    return y.astype(np.int64)


def split(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Seeded split into (train, held-out)."""
    n = len(ds)
    n_held = int(round(n * fraction))
    if n_held < 1 or n - n_held < 1:
        raise DataError(f"{ds.origin}: {n} samples are too few to hold out {fraction:.0%} for evaluation; pass --eval-data")
    perm = np.random.default_rng(seed).permutation(n)
    return ds.take(np.sort(perm[n_held:])), ds.take(np.sort(perm[:n_held]))
