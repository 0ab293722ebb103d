"""Reading the user's model and writing ours: validated in, atomic out, the input never overwritten.

In: the file is read once, parsed without external data, checked by validate.py, and only then are the checked
external-data files inlined; onnxruntime later gets these bytes, never the path. Out: bytes go to a temporary file
next to the destination, are fsynced, and are renamed over it; a failure (disk full included) leaves the previous
file, if any, untouched and no temporary file behind.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from .errors import ModelError, ModelTooLargeError, OutputError
from .validate import (
    DEFAULT_MAX_BYTES, MAX_IR_VERSION, MAX_OPSET, PROTOBUF_LIMIT, check_max_bytes, external_locations,
    load_external_data, validate_model,
)

__all__ = ["DEFAULT_MAX_BYTES", "MAX_IR_VERSION", "MAX_OPSET", "StagedFile", "check_output_path", "load_model",
           "save_model_atomic", "write_bytes_atomic"]

_CHUNK = 64 * 2**20  # one os.write call moves at most ~2 GiB on Linux; smaller chunks keep partial writes simple


# ------------------------------------------------------------------------------------------------------- reading


def load_model(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> onnx.ModelProto:
    """The validated model with its external data inlined. Raises ModelError (or a subclass) naming the problem."""
    path = Path(path)
    check_max_bytes(max_bytes)
    model = _parse(path, _read_bytes(path, max_bytes))
    if not model.graph.node:
        raise ModelError(f"{path}: not an ONNX model (no graph nodes); is this the right file?")
    validate_model(model, str(path), path.parent, max_bytes)
    load_external_data(model, path.parent, str(path))
    try:
        onnx.checker.check_model(_with_int64_sparse_indices(model))
    except (onnx.checker.ValidationError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"{path}: invalid ONNX model: {first}") from None
    return model


def _with_int64_sparse_indices(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx.checker accepts only int64 sparse indices; onnxruntime also loads int32/int16 ones (our opt-in
    `--sparse-index int32` output). Check such a model as if its indices were int64; the model itself is unchanged."""
    compact = [t for t in model.graph.sparse_initializer if t.indices.data_type != onnx.TensorProto.INT64]
    if not compact:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for sparse in copy.graph.sparse_initializer:
        if sparse.indices.data_type != onnx.TensorProto.INT64:
            idx = onnx.numpy_helper.to_array(sparse.indices).astype(np.int64)
            sparse.indices.CopyFrom(onnx.numpy_helper.from_array(idx, sparse.indices.name))
    return copy


def _read_bytes(path: Path, max_bytes: int) -> bytes:
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    limit = min(max_bytes, PROTOBUF_LIMIT)
    try:  # O_NONBLOCK: a FIFO swapped in after the is_file() check must not hang us
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ModelError(f"{path}: cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ModelError(f"{path}: not a regular file")
        if st.st_size > limit:
            raise ModelTooLargeError(f"{path}: {st.st_size:,} bytes is over the limit of {limit:,} (max_bytes, and "
                                     "protobuf's 2 GiB); store large weights as external data or pass a larger max_bytes")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ModelTooLargeError(f"{path}: grew past {limit:,} bytes while being read")
    return data


def _parse(path: Path, data: bytes) -> onnx.ModelProto:
    try:  # no external data is touched here: validate.py checks those references first
        return onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else "truncated or not protobuf"
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {why})") from None


# ------------------------------------------------------------------------------------------------------- outputs


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:  # same inode: catches symlinks, hardlinks and other spellings (a/../m.onnx) of one file
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where the paths lead
        return os.path.realpath(a) == os.path.realpath(b)


def _input_files(model_path: Path, out: Path) -> list[Path]:
    """The model and, when `out` exists, the external-data files it names (overwriting those destroys the input too)."""
    files = [model_path]
    folder = os.path.realpath(model_path.parent)
    if not out.exists() or _same_file(out, model_path) or not os.path.realpath(out).startswith(folder + os.sep):
        return files  # validation refuses external data outside the model's folder, so only there is it at risk
    try:
        model = _parse(model_path, _read_bytes(model_path, PROTOBUF_LIMIT))
    except ModelError:
        return files  # load_model will report the unreadable model
    return files + [model_path.parent / loc for loc in sorted(external_locations(model))]


def check_output_path(model_path: str | os.PathLike | None, output: str | os.PathLike,
                      protected: tuple = (), overwrite_input: bool = False) -> Path:
    """Refuse an output that is (a link to, another name of) the input model, its external data, or any path in
    `protected` (data files); the folder must exist. Nothing is written here."""
    out = Path(output)
    if model_path is not None and not overwrite_input:
        for f in _input_files(Path(model_path), out):
            if _same_file(out, f):
                kind = "input model" if f == Path(model_path) else f"input model's external data ({f.name})"
                raise OutputError(f"{out}: refusing to overwrite the {kind}; choose another -o path")
    for p in protected:
        if p is not None and isinstance(p, (str, os.PathLike)) and _same_file(out, p):
            raise OutputError(f"{out}: refusing to overwrite the input file {p}; choose another output path")
    if not out.parent.is_dir():
        raise OutputError(f"{out}: folder {out.parent} does not exist")
    if out.is_dir():
        raise OutputError(f"{out}: is a folder; give a file path for the output")
    return out


def _why(out: Path, exc: OSError, what: str) -> str:
    unchanged = f"any previous {out.name} is unchanged and no temporary file was left"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"{out}: no space left on the device (or disk quota reached) while writing the {what}; "
                f"free some space or choose another folder ({unchanged})")
    return f"{out}: could not write the {what} ({exc.strerror or exc}); {unchanged}"


def _file_mode(out: Path) -> int:
    try:  # replacing a file: keep its permissions
        return stat.S_IMODE(os.stat(out).st_mode)
    except OSError:  # new file: what open() would give, not mkstemp's 0600 (umask is only readable by setting it)
        mask = os.umask(0o022)
        os.umask(mask)
        return 0o666 & ~mask


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view[:_CHUNK])  # a full disk shows up here as a short write, then ENOSPC
        if n <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[n:]


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder: to make its entries, and a rename into it, durable). Best effort: some file
    systems cannot, which is not the user's problem."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class StagedFile:
    """`data` written and fsynced to a temporary file next to `output`; commit() renames it into place.

    Lets a caller check the written file (e.g. open an onnxruntime session on `.path`) before it replaces anything;
    leaving the `with` block without commit() removes it."""

    def __init__(self, output: str | os.PathLike, data: bytes, what: str = "file"):
        self.out, self.what, self.size, self.path = Path(output), what, len(data), None
        if self.out.is_dir():
            raise OutputError(f"{self.out}: is a folder; give a file path for the {what}")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.out.name}.", suffix=".tmp", dir=self.out.parent)
        except OSError as exc:
            raise OutputError(_why(self.out, exc, what)) from None
        self.path = Path(tmp)
        try:
            try:
                _write_all(fd, data)
                if hasattr(os, "fchmod"):
                    os.fchmod(fd, _file_mode(self.out))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self.discard()
            raise OutputError(_why(self.out, exc, what)) from None
        except BaseException:
            self.discard()
            raise

    def commit(self) -> int:
        if self.path is None:
            raise OutputError(f"{self.out}: the staged {self.what} was already committed or discarded")
        try:
            os.replace(self.path, self.out)
        except OSError as exc:
            self.discard()
            raise OutputError(_why(self.out, exc, self.what)) from None
        self.path = None
        fsync_path(self.out.parent)
        return self.size

    def discard(self) -> None:
        if self.path is not None:
            try:
                self.path.unlink(missing_ok=True)
            except OSError:
                pass
            self.path = None

    def __enter__(self) -> "StagedFile":
        return self

    def __exit__(self, *exc) -> bool:
        self.discard()
        return False


def write_bytes_atomic(output: str | os.PathLike, data: bytes, what: str = "file") -> int:
    """Write `data` to `output` atomically; OutputError (disk full included) leaves the previous file intact."""
    with StagedFile(output, data, what) as staged:
        return staged.commit()


def save_model_atomic(model: onnx.ModelProto, output: str | os.PathLike) -> int:
    """Serialize and write atomically; returns the bytes written."""
    return write_bytes_atomic(output, model.SerializeToString(), "model")
