"""Training and evaluation data: arrays named after the model's inputs (first axis = samples), optional labels.

Sources: an .npz file (read without pickle), a dict of arrays, or an iterable of feed dicts (concatenated).
Everything is checked against the model before any training or calibration starts.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Union

import numpy as np
import onnx

from .errors import DataError

DataSource = Union[str, os.PathLike, Mapping[str, np.ndarray], Iterable[Mapping[str, np.ndarray]], "Dataset"]


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


def load(source: DataSource, labels: str | None = None, what: str = "data", require_labels: bool = True) -> Dataset:
    """A Dataset from a path, a dict of arrays, an iterable of feed dicts, or a Dataset.

    With require_labels=False a missing labels array is allowed (the Dataset then has no labels)."""
    if isinstance(source, Dataset):
        return source
    if isinstance(source, (str, os.PathLike)):
        arrays, origin = _read_npz(Path(source)), str(source)
    elif isinstance(source, Mapping):
        arrays, origin = {k: np.asarray(v) for k, v in source.items()}, what
    else:
        arrays, origin = _concat_feeds(source, what), what
    if labels is not None and labels not in arrays and require_labels:
        raise DataError(f"{origin}: no array named {labels!r} for the labels (arrays: {', '.join(sorted(arrays))})")
    y = arrays.pop(labels, None) if labels is not None else None
    if not arrays:
        raise DataError(f"{origin}: holds no input arrays")
    return Dataset(arrays, y, origin)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise DataError(f"{path}: expected an .npz archive of named arrays, got a single array")
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file without pickled objects ({exc})") from None


def _concat_feeds(feeds: Iterable[Mapping[str, np.ndarray]], what: str) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for feed in feeds:
        for k, v in feed.items():
            parts.setdefault(k, []).append(np.asarray(v))
    if not parts:
        raise DataError(f"{what}: the iterable of feed dicts is empty")
    return {k: np.concatenate(v) for k, v in parts.items()}


def conform(ds: Dataset, model: onnx.ModelProto, labels_key: str | None = None) -> Dataset:
    """Check ds against the model's inputs and cast to their dtypes; raise DataError naming what is wrong."""
    inits = {t.name for t in model.graph.initializer}
    specs = {vi.name: vi for vi in model.graph.input if vi.name not in inits}
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
    lengths = {len(v) for v in out.values()} | ({len(ds.labels)} if ds.labels is not None else set())
    if len(lengths) != 1:
        raise DataError(f"{ds.origin}: arrays disagree on the number of samples ({sorted(lengths)})")
    if lengths == {0}:
        raise DataError(f"{ds.origin}: holds no samples")
    labels = None if ds.labels is None else _conform_labels(ds.origin, ds.labels)
    return Dataset(out, labels, ds.origin)


def _conform_array(origin: str, name: str, arr: np.ndarray, spec: onnx.ValueInfoProto) -> np.ndarray:
    tt = spec.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    if arr.dtype.kind not in "fiub" or (dtype.kind == "f" and arr.dtype.kind not in "fiub"):
        raise DataError(f"{origin}: input {name!r} has dtype {arr.dtype}, the model wants {dtype}")
    if dims and arr.ndim != len(dims):
        raise DataError(f"{origin}: input {name!r} has shape {arr.shape}, the model wants rank {len(dims)} {dims}")
    for axis, (want, got) in enumerate(zip(dims[1:], arr.shape[1:]), start=1):
        if want is not None and want != got:
            raise DataError(f"{origin}: input {name!r} has shape {arr.shape}, the model wants {dims} (axis {axis})")
    if dtype.kind == "f" and not np.isfinite(arr).all():
        raise DataError(f"{origin}: input {name!r} contains NaN or Inf")
    return np.ascontiguousarray(arr, dtype=dtype)


def _conform_labels(origin: str, y: np.ndarray) -> np.ndarray:
    if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
        raise DataError(f"{origin}: labels must be integer class indices, got dtype {y.dtype}")
    if y.ndim != 1:
        raise DataError(f"{origin}: labels must be one class index per sample (shape [N]), got shape {y.shape}")
    if (y < 0).any():
        raise DataError(f"{origin}: labels must be >= 0")
    return y.astype(np.int64)


def split(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Seeded split into (train, held-out)."""
    n = len(ds)
    n_held = int(round(n * fraction))
    if n_held < 1 or n - n_held < 1:
        raise DataError(f"{ds.origin}: {n} samples are too few to hold out {fraction:.0%} for evaluation; pass --eval-data")
    perm = np.random.default_rng(seed).permutation(n)
    return ds.take(np.sort(perm[n_held:])), ds.take(np.sort(perm[:n_held]))
