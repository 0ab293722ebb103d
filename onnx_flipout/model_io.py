"""Reading the user's model and writing ours: clear errors in, atomic writes out, the input never overwritten."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .errors import ModelError, OutputError

# What onnxruntime-training 1.19.2 (the fine-tuning runtime) can load.
MAX_OPSET = 21
MAX_IR_VERSION = 10


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, OSError) as exc:
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.graph.node:
        raise ModelError(f"{path}: not an ONNX model (no graph nodes); is this the right file?")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"{path}: invalid ONNX model: {first}") from None
    _check_versions(path, model)
    return model


def _check_versions(path: Path, model: onnx.ModelProto) -> None:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx") and op.version > MAX_OPSET:
            raise ModelError(
                f"{path}: ai.onnx opset {op.version} is newer than the training runtime supports ({MAX_OPSET}); "
                f"re-export with opset <= {MAX_OPSET}"
            )


def check_output_path(model_path: str | os.PathLike | None, output: str | os.PathLike) -> Path:
    out = Path(output)
    if model_path is not None and out.exists() and out.resolve() == Path(model_path).resolve():
        raise OutputError(f"{out}: refusing to overwrite the input model; choose another -o path")
    if not out.parent.exists():
        raise OutputError(f"{out}: folder {out.parent} does not exist")
    if out.is_dir():
        raise OutputError(f"{out}: is a folder; give a file path for the output model")
    return out


def save_model_atomic(model: onnx.ModelProto, output: str | os.PathLike) -> int:
    """Write next to the destination, then rename: a failure leaves the previous file (if any) intact."""
    out = Path(output)
    data = model.SerializeToString()
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{out}: could not write the model ({exc.strerror or exc})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(data)
