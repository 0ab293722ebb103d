"""Fine-tuning checkpoints on disk: written atomically, refused when they do not fit the run that wants them.

Layout: DIR/step-000000450/ holds
  ort_state      onnxruntime's CheckpointState with the optimizer state (AdamW moments and step count): FIELD-NOTES
                 measured that without it a resumed run drifts (3e-3), with it the run continues bit for bit;
  state.json     the trainer's and the hooks' state, arrays replaced by references into
  arrays.npz     (momentum buffers, masks, flip buffers...), read without pickle;
  manifest.json  format version, step, what the run must match (model and data fingerprints, configuration,
                 onnxruntime version) and the size and sha256 of the three files above. Written last.
A checkpoint is written into a temporary folder next to the others and renamed into place when complete; only then
are the older ones removed, so at every moment (Ctrl-C and a full disk included) the latest complete one is valid.
The files are checked (sizes, checksums) before onnxruntime reads any of them: it trusts what it loads.
This module does not import onnxruntime; the trainer passes in the function that writes its state.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from onnx_flipout.errors import CheckpointError
from onnx_flipout.model_io import fsync_path

FORMAT = "onnx-flipout-checkpoint"
FORMAT_VERSION = 1
ORT_FILE, STATE_FILE, ARRAYS_FILE, MANIFEST = "ort_state", "state.json", "arrays.npz", "manifest.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = ".step-"  # temporary folders: .step-<step>.<random>.tmp, removed on the next start
_ARRAY = "__array__"


@dataclass
class Snapshot:
    """A validated checkpoint: where it is, the step it continues after, and the states to hand back."""

    folder: Path
    step: int
    total_steps: int
    ort_state: Path
    trainer: dict
    hooks: list


def sha256_of(chunks) -> str:
    """Fingerprint of byte chunks (model bytes; data arrays with their names, dtypes and shapes)."""
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def data_fingerprint(inputs: dict[str, np.ndarray], target: np.ndarray) -> str:
    def chunks():
        for name, a in sorted(inputs.items()) + [("<target>", target)]:
            a = np.ascontiguousarray(a)
            yield f"{name}|{a.dtype.str}|{a.shape}|".encode()
            yield a.data
    return sha256_of(chunks())


class CheckpointStore:
    """The checkpoints of one run in `folder`; `identity` is what a resume must match (JSON values)."""

    def __init__(self, folder: str | os.PathLike, identity: dict):
        self.folder, self.identity = Path(folder), identity
        if self.folder.exists() and not self.folder.is_dir():
            raise CheckpointError(f"--checkpoint-dir {self.folder}: is a file, not a folder")
        for stale in self.folder.glob(f"{_TMP_PREFIX}*.tmp"):  # left by a run killed while writing
            shutil.rmtree(stale, ignore_errors=True)

    def latest(self) -> Path | None:
        steps = _step_folders(self.folder)
        return steps[-1] if steps else None

    def check_fresh(self) -> None:
        """A run that does not resume must not silently discard (or later mix with) an earlier run's checkpoint."""
        latest = self.latest()
        if latest is not None:
            raise CheckpointError(f"{self.folder} already holds a checkpoint ({latest.name}) from an earlier run: add "
                                  "--resume to continue it, or give another --checkpoint-dir (or delete that one)")

    def load(self) -> Snapshot:
        folder = self.latest()
        if folder is None:
            raise CheckpointError(f"{self.folder}: no checkpoint to resume from; run without --resume to start")
        manifest = _read_manifest(folder)
        _check_identity(folder, manifest["identity"], self.identity)
        for name, meta in manifest["files"].items():
            _check_file(folder, name, meta)
        doc, arrays = _read_state(folder)
        try:
            state = _join(doc, arrays)
        except KeyError as exc:
            raise CheckpointError(f"{folder}: {STATE_FILE} refers to an array {exc} missing from {ARRAYS_FILE}") from None
        return Snapshot(folder, int(manifest["step"]), int(manifest["total_steps"]), folder / ORT_FILE,
                        state["trainer"], state["hooks"])

    def save(self, step: int, total_steps: int, write_ort: Callable[[Path], None], trainer: dict, hooks: list) -> Path:
        """Write the checkpoint after `step` completely, rename it into place, then drop the older ones."""
        final = self.folder / f"step-{step:09d}"
        try:  # created at the first save: a mistyped --resume folder is not left behind
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{step}.", suffix=".tmp", dir=self.folder))
        except OSError as exc:
            raise CheckpointError(self._save_failed(exc)) from None
        try:
            self._write(tmp, step, total_steps, write_ort, trainer, hooks)
            os.rename(tmp, final)
            fsync_path(self.folder)
        except BaseException as exc:  # Ctrl-C included: never leave a half-written folder named like a checkpoint
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise CheckpointError(self._save_failed(exc)) from None
            raise
        for old in _step_folders(self.folder):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def _write(self, tmp: Path, step: int, total_steps: int, write_ort, trainer: dict, hooks: list) -> None:
        write_ort(tmp / ORT_FILE)
        fsync_path(tmp / ORT_FILE)
        arrays: dict[str, np.ndarray] = {}
        doc = _split({"trainer": trainer, "hooks": hooks}, arrays)
        _write_file(tmp / STATE_FILE, lambda f: f.write(json.dumps(doc).encode()))
        _write_file(tmp / ARRAYS_FILE, lambda f: np.savez(f, **arrays))
        manifest = {
            "format": FORMAT, "version": FORMAT_VERSION, "step": step, "total_steps": total_steps,
            "identity": self.identity,
            "files": {n: _digest(tmp / n) for n in (ORT_FILE, STATE_FILE, ARRAYS_FILE)},
        }
        _write_file(tmp / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
        fsync_path(tmp)

    def _save_failed(self, exc: OSError) -> str:
        kept = self.latest()
        return (f"could not write a checkpoint into {self.folder} ({exc.strerror or exc}); "
                + (f"the previous one, {kept}, is kept" if kept else "there is no earlier checkpoint"))


def latest_step(folder: str | os.PathLike) -> tuple[int, int] | None:
    """(step, total steps) of the newest checkpoint in `folder`, from its manifest alone; None if there is none."""
    for f in reversed(_step_folders(Path(folder))):
        try:
            m = json.loads((f / MANIFEST).read_text())
            return int(m["step"]), int(m["total_steps"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


# -------------------------------------------------------------------------------------------------- reading


def _step_folders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def _read_manifest(folder: Path) -> dict:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: incomplete checkpoint, {MANIFEST} is missing") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}: {MANIFEST} is unreadable or corrupt ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{folder}: {MANIFEST} is not an onnx-flipout checkpoint manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{folder}: checkpoint format version {manifest.get('version')!r}, but this onnx-flipout "
                              f"reads version {FORMAT_VERSION}; start a new run without --resume")
    for key, kind in (("step", int), ("total_steps", int), ("identity", dict), ("files", dict)):
        if not isinstance(manifest.get(key), kind):
            raise CheckpointError(f"{folder}: {MANIFEST} has no valid {key!r}")
    if set(manifest["files"]) != {ORT_FILE, STATE_FILE, ARRAYS_FILE}:
        raise CheckpointError(f"{folder}: {MANIFEST} lists files {sorted(manifest['files'])}")
    return manifest


def _check_identity(folder: Path, saved: dict, now: dict) -> None:
    """Name every difference between the run that saved the checkpoint and this one."""
    diffs = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if key == "config" and isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"--{k.replace('_', '-')} {a.get(k)!r} in the checkpoint, {b.get(k)!r} now"
                      for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            what = {"model_sha256": "the model", "data_sha256": "the training data"}.get(key, key)
            diffs.append(f"{what} differs ({_short(a)} in the checkpoint, {_short(b)} now)")
    if diffs:
        raise CheckpointError(f"{folder}: checkpoint was saved by a different run: {'; '.join(diffs)}")


def _short(v) -> str:
    return f"sha256 {v[:12]}…" if isinstance(v, str) and len(v) == 64 else repr(v)


def _check_file(folder: Path, name: str, meta) -> None:
    path = folder / name
    if not path.is_file():
        raise CheckpointError(f"{folder}: {name} is missing")
    size = path.stat().st_size
    if not isinstance(meta, dict) or size != meta.get("bytes"):
        raise CheckpointError(f"{folder}: {name} is truncated or altered ({size:,} bytes, "
                              f"the manifest says {meta.get('bytes') if isinstance(meta, dict) else '?'})")
    if _digest(path)["sha256"] != meta.get("sha256"):
        raise CheckpointError(f"{folder}: {name} is corrupt (its sha256 differs from the manifest's)")


def _read_state(folder: Path) -> tuple[dict, dict[str, np.ndarray]]:
    try:
        doc = json.loads((folder / STATE_FILE).read_text())
        with np.load(folder / ARRAYS_FILE, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{folder}: state cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict) or set(doc) != {"trainer", "hooks"}:
        raise CheckpointError(f"{folder}: {STATE_FILE} does not hold a trainer and hooks state")
    return doc, arrays


# ------------------------------------------------------------------------- nested state <-> JSON + arrays


def _split(obj, arrays: dict[str, np.ndarray]):
    """JSON-able copy of `obj` with every array moved into `arrays` and replaced by a reference."""
    if isinstance(obj, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {_ARRAY: key}
    if isinstance(obj, dict):
        return {str(k): _split(v, arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_split(v, arrays) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint state cannot hold a {type(obj).__name__}")


def _join(obj, arrays: dict[str, np.ndarray]):
    if isinstance(obj, dict):
        if set(obj) == {_ARRAY}:
            return arrays[str(obj[_ARRAY])]
        return {k: _join(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, arrays) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------- writing


def _write_file(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _digest(path: Path) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2**22):
            h.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


