"""Training artifacts for onnxruntime-training 1.19.2's on-device API, from the user's own ONNX graph.

1.19.2 loads IR <= 10 only, but `generate_artifacts` stamps the optimizer model with `onnx.IR_VERSION`, which is 11+
under onnx >= 1.18 (FIELD-NOTES). We pin onnx.IR_VERSION to 10 for the call and lower any written file still above.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from onnx_flipout.errors import TrainingError

from .losses import LossSpec

MAX_IR_VERSION = 10
OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class TrainingArtifacts:
    directory: Path
    optimizer: str

    @property
    def training_model(self) -> Path:
        return self.directory / "training_model.onnx"

    @property
    def eval_model(self) -> Path:
        return self.directory / "eval_model.onnx"

    @property
    def optimizer_model(self) -> Path:
        return self.directory / "optimizer_model.onnx"

    @property
    def checkpoint(self) -> Path:
        return self.directory / "checkpoint"


@contextlib.contextmanager
def _onnx_ir_version(version: int):
    saved = onnx.IR_VERSION
    onnx.IR_VERSION = min(saved, version)
    try:
        yield
    finally:
        onnx.IR_VERSION = saved


@contextlib.contextmanager
def _captured_stderr():
    """Capture file descriptor 2: onnxruntime's gradient builder logs every graph transformer at INFO level and
    ignores the default logger severity. The text is kept for error messages."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        captured = {"text": ""}
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured["text"] = sink.read().decode(errors="replace")


def build_artifacts(
    model: onnx.ModelProto,
    trainable: list[str],
    output: str,
    loss: LossSpec,
    optimizer: str,
    directory: Path,
    weight_decay: float = 0.0,
) -> TrainingArtifacts:
    """Write training/eval/optimizer models and the checkpoint for `model` into `directory`."""
    import onnxruntime as ort
    from onnxruntime.training import artifacts as ort_artifacts
    from onnxruntime.training import onnxblock

    ort.set_default_logger_severity(3)  # onnxblock runs graph transformers that log every pass at INFO

    optimizers = {
        "sgd": ort_artifacts.OptimType.SGD,  # plain SGD; the trainer adds momentum/weight decay on the gradients
        "adamw": onnxblock.optim.AdamW(weight_decay=weight_decay),
    }
    base = onnx.ModelProto()
    base.CopyFrom(model)
    base.ir_version = min(base.ir_version, MAX_IR_VERSION)
    trainable_set = set(trainable)
    frozen = [t.name for t in base.graph.initializer if t.name not in trainable_set]
    directory.mkdir(parents=True, exist_ok=True)
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))
    try:
        with _onnx_ir_version(MAX_IR_VERSION), _captured_stderr() as log:
            ort_artifacts.generate_artifacts(
                base,
                requires_grad=list(trainable),
                frozen_params=frozen,
                loss=loss.block(),
                optimizer=optimizers[optimizer],
                artifact_directory=directory,
                loss_input_names=[output],
            )
    except Exception as exc:
        errors = [ln for ln in log["text"].splitlines() if "[E:" in ln or "Error" in ln][-3:]
        detail = f" ({' | '.join(errors)})" if errors else ""
        raise TrainingError(
            f"could not build the training graph for output {output!r}: {exc}{detail} "
            "(onnx_flipout.trainability.prepare_for_training names and repairs the ops that cause this)"
        ) from exc
    result = TrainingArtifacts(directory, optimizer)
    for path in (result.training_model, result.eval_model, result.optimizer_model):
        _lower_ir(path)
    return result


def _lower_ir(path: Path) -> None:
    m = onnx.load(str(path), load_external_data=False)
    if m.ir_version > MAX_IR_VERSION:
        m.ir_version = MAX_IR_VERSION
        onnx.save(m, str(path))
