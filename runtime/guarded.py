"""Artifact generation and the first training step, first in a child process, so a crash there is an error, not death.

onnxruntime-training 1.19.2 can kill the process outright: SIGFPE on the first step of a graph with AveragePool,
segfaults on malformed graphs (FIELD-NOTES). Nothing in Python catches a signal, so the risky part runs first in
`python -m onnx_flipout.runtime.guarded DIR`: generate_artifacts (into the caller's folder), one training step on a
real batch, and one eval step. The child writes its stage before each one; the parent turns a death by signal, a
non-zero exit or a timeout into a TrainingError that names the stage and the signal. Only when the child succeeds
does the caller train in-process, from the artifacts the child wrote (they are plain files: nothing is rebuilt).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx

from onnx_flipout.errors import TrainingError

from .artifacts import TrainingArtifacts, build_artifacts
from .losses import LossSpec

STAGES = {
    "load": "loading the model",
    "artifacts": "generating the training artifacts",
    "session": "loading the training artifacts into onnxruntime",
    "train-step": "the first training step",
    "eval-step": "the first evaluation step",
}
_TARGET = "__target__"


def guarded_build_artifacts(
    model: onnx.ModelProto,
    trainable: list[str],
    output: str,
    loss: LossSpec,
    optimizer: str,
    directory: Path,
    feeds: dict[str, np.ndarray],
    target: np.ndarray,
    weight_decay: float = 0.0,
    timeout: float | None = None,
) -> TrainingArtifacts:
    """build_artifacts + one train and one eval step on (feeds, target), in a child process; TrainingError on failure.

    feeds/target: one small batch (a few samples is enough). Returns the artifacts the child wrote to `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="onnx-flipout-guard-") as tmp:
        work = Path(tmp)
        onnx.save(model, str(work / "model.onnx"))
        np.savez(work / "batch.npz", **feeds, **{_TARGET: target})
        job = {"trainable": list(trainable), "output": output, "loss": asdict(loss), "optimizer": optimizer,
               "weight_decay": weight_decay, "directory": str(directory.resolve())}
        (work / "job.json").write_text(json.dumps(job))
        _run_child(work, output, timeout)
    return TrainingArtifacts(directory, optimizer)


def _run_child(work: Path, output: str, timeout: float | None) -> None:
    cmd = [sys.executable, "-m", "onnx_flipout.runtime.guarded", str(work)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TrainingError(f"{_stage(work)} for output {output!r} did not finish within {timeout:g} s") from None
    stage = _stage(work)
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode)
        raise TrainingError(
            f"onnxruntime-training crashed with {sig.name} ({signal.strsignal(sig)}) during {stage} for output "
            f"{output!r}, after {time.perf_counter() - t0:.1f} s; run onnx_flipout.trainability.prepare_for_training "
            "on the model to find and repair the op that causes it")
    if proc.returncode != 0:
        result = work / "result.json"
        detail = json.loads(result.read_text())["error"] if result.exists() else proc.stderr.strip()[-400:]
        raise TrainingError(f"{stage} failed for output {output!r}: {detail}")


def _stage(work: Path) -> str:
    path = work / "stage"
    key = path.read_text().strip() if path.exists() else ""
    return STAGES.get(key, "starting the training process")


def _child(work: Path) -> int:
    """Runs in the child process: every stage is recorded before it starts, so a crash can be attributed."""
    stage_file = work / "stage"
    job = json.loads((work / "job.json").read_text())
    try:
        stage_file.write_text("load")
        model = onnx.load(str(work / "model.onnx"))
        with np.load(work / "batch.npz", allow_pickle=False) as npz:
            batch = {k: npz[k] for k in npz.files}
        target = batch.pop(_TARGET)
        stage_file.write_text("artifacts")
        arts = build_artifacts(model, job["trainable"], job["output"], LossSpec(**job["loss"]), job["optimizer"],
                               Path(job["directory"]), job["weight_decay"])
        _one_step(arts, batch, target, stage_file)
    except Exception as exc:  # an ordinary failure: report it to the parent as text
        text = str(exc) if isinstance(exc, TrainingError) else f"{type(exc).__name__}: {exc}"
        (work / "result.json").write_text(json.dumps({"error": text}))
        return 1
    (work / "result.json").write_text(json.dumps({"ok": True}))
    return 0


def _one_step(arts: TrainingArtifacts, feeds: dict, target: np.ndarray, stage_file: Path) -> None:
    import onnxruntime as ort
    from onnxruntime.training.api import CheckpointState, Module, Optimizer

    ort.set_default_logger_severity(3)
    stage_file.write_text("session")
    state = CheckpointState.load_checkpoint(str(arts.checkpoint))
    module = Module(str(arts.training_model), state, str(arts.eval_model))
    optimizer = Optimizer(str(arts.optimizer_model), module)
    names = module.input_names()
    target_name = next(n for n in names if n not in feeds)
    args = [{**feeds, target_name: target}[n] for n in names]
    stage_file.write_text("train-step")
    module.train()
    loss = float(np.asarray(module(*args)).reshape(-1)[0])
    optimizer.step()
    module.lazy_reset_grad()
    if not np.isfinite(loss):
        raise TrainingError(f"the first training step's loss is {loss}")
    stage_file.write_text("eval-step")
    module.eval()
    module(*args)


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1])))
