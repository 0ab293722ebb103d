"""External-data references of an untrusted model: checked before a byte is read, then read by us.

onnxruntime 1.19.2 follows `../`, absolute and symlinked locations (FIELD-NOTES) and treats `*/_ORT_MEM_ADDR_*/*` as a
raw memory address. So a location must be a relative path inside the model's folder, reached without symlinks, naming
a plain file with no other name (a hardlink could be any file on the disk), and offset/length must agree with the
file's size and with the tensor's declared size. Only then is it inlined; onnxruntime never sees a location.
"""

from __future__ import annotations

import os
import re
import stat

import onnx
from onnx import TensorProto, external_data_helper

from .errors import ModelError, UnsafeModelError

_MEMORY_MARKER = "_ORT_MEM_ADDR_"
_REMEDY = ("Keep external data files inside the model's folder, as plain files "
           "(onnx.save_model(m, path, save_as_external_data=True, location='model.data'))")


def quote(text: str, limit: int = 80) -> str:
    """Untrusted names quoted with escapes (a newline in a name must not break our one-line errors)."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _fields(tensor: TensorProto, what: str, origin: str) -> tuple[str, int, int | None]:
    """(location, offset, length or None) with the integers parsed strictly."""
    entries = {e.key: e.value for e in tensor.external_data}
    values = []
    for key in ("offset", "length"):
        raw = entries.get(key)
        try:
            value = None if raw is None else int(raw)
        except ValueError:
            value = -1
        if value is not None and value < 0:
            raise ModelError(f"{origin}: external data {key} {quote(raw)} of {what} is not a non-negative integer")
        values.append(value)
    return entries.get("location", ""), values[0] or 0, values[1]


def unsafe_reason(location: str) -> str | None:
    """Why a location string alone is unacceptable, or None."""
    if "\x00" in location:
        return "contains a NUL byte"
    if _MEMORY_MARKER in location or "*" in location:
        return "is an onnxruntime in-memory address marker, which would make it read raw process memory"
    if os.path.isabs(location) or location.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", location):
        return "is an absolute path"
    if ".." in re.split(r"[\\/]", location):
        return "leaves the model's folder through '..'"
    return None


def check_reference(tensor: TensorProto, what: str, nbytes: int, origin: str, base_dir) -> None:
    """Raise UnsafeModelError / ModelError unless the tensor's external data is safe to read and has nbytes."""
    location, offset, length = _fields(tensor, what, origin)
    if not location:
        raise ModelError(f"{origin}: {what} is marked as external data but has no location")
    reason = unsafe_reason(location)
    if reason:
        raise UnsafeModelError(f"{origin}: external data location {quote(location)} of {what} {reason}; refused "
                               f"before reading it. {_REMEDY}")
    if base_dir is None:
        raise UnsafeModelError(f"{origin}: {what} uses external data, but no model folder was given to read it from")
    if tensor.data_type == TensorProto.STRING:
        raise ModelError(f"{origin}: {what} is a string tensor in external data, which ONNX does not allow")
    size = _checked_file(str(base_dir), location, what, origin).st_size
    if offset > size or offset + (length or 0) > size:
        raise ModelError(f"{origin}: external data of {what} (offset {offset}, length {length}) runs past the end "
                         f"of {quote(location)} ({size:,} bytes); the data file is truncated or not this model's")
    length = size - offset if length is None else length
    if length != nbytes:
        raise ModelError(f"{origin}: external data of {what} is {length:,} bytes at offset {offset} in "
                         f"{quote(location)}, but its dims {list(tensor.dims)} need {nbytes:,}")


def _checked_file(base_dir: str, location: str, what: str, origin: str) -> os.stat_result:
    """A plain file inside the model's folder, reached without symlinks and with no other name (hardlink)."""
    path = os.path.join(base_dir, location)
    refuse = f"{origin}: external data {quote(location)} of {what} "
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ModelError(refuse + f"is missing (looked in {base_dir}); copy it next to the model") from None
    except OSError as exc:
        raise ModelError(refuse + f"cannot be read ({exc.strerror})") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeModelError(refuse + f"is a symlink; refused before reading it. {_REMEDY}")
    inside = os.path.join(os.path.realpath(base_dir), os.path.normpath(location))
    if os.path.realpath(path) != inside:
        raise UnsafeModelError(refuse + f"goes through a symlinked folder; refused. {_REMEDY}")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeModelError(refuse + "is not a regular file (a device, FIFO or folder); refused")
    if st.st_nlink > 1:
        raise UnsafeModelError(refuse + f"is a hardlink ({st.st_nlink} names for one file), so it may be a file "
                               "from outside the model's folder; refused. Copy the data instead of linking it")
    return st


def inline(tensor: TensorProto, base_dir, nbytes: int, what: str, origin: str) -> None:
    """Read a checked reference into tensor.raw_data (the tensor is no longer external afterwards)."""
    try:  # onnx's own reader adds its checks (containment, bounds) on top of ours
        external_data_helper.load_external_data_for_tensor(tensor, str(base_dir))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UnsafeModelError(f"{origin}: external data of {what} could not be read safely: {first}") from None
    if len(tensor.raw_data) != nbytes:  # the file changed between the check and the read
        raise ModelError(f"{origin}: external data of {what} changed while it was read; try again")
