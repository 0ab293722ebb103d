"""`compress`: fine-tune with pruning in onnxruntime-training, then quantize and store sparse, and measure it all.

Stages: load and check -> make the graph trainable (trainability.py: repairs checked exact, frozen fallback) ->
(teacher outputs from the original when there are no labels) -> fine-tune with the pruning hook (finetune.py; the
artifact build and first step guarded in a child process) -> write the masked weights back -> shrink dead units ->
calibrate and insert QDQ -> sparse storage -> save atomically -> verify and measure against the original (measure.py).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from . import data as data_mod
from .config import CompressConfig
from .errors import ConfigError, TrainingError
from .finetune import finetune
from .measure import measure
from .model_io import StagedFile, check_output_path, load_model
from .passes import Sequential
from .passes.preflight import reaches
from .passes.prunable import find_prunable_weights, find_trainable_params
from .passes.repairs import ThawInitializers
from .passes.shrink import ShrinkDeadUnits
from .passes.sparse import SparsifyInitializers
from .passes.weights import SetInitializers
from .pruning.pruner import PruningResult
from .report import FROZEN, OFF_PATH, Report, TensorStats


class _Stages:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 3)


def compress(
    model: str | os.PathLike,
    output: str | os.PathLike,
    data: data_mod.DataSource,
    labels: str | None = None,
    eval_data: data_mod.DataSource | None = None,
    report: str | os.PathLike | None = None,
    config: CompressConfig | None = None,
    **options,
) -> Report:
    """Compress the ONNX model at `model` into `output` and return the measured Report.

    `data` / `eval_data`: an .npz path, a dict of arrays, or an iterable of feed dicts, named after the model's inputs;
    `labels` names the labels array (cross-entropy); without labels the model is distilled from its own outputs.
    Options are CompressConfig fields (sparsity=0.9, quantize="int8", epochs=20, ...).
    """
    cfg = config if config is not None else CompressConfig(**options)
    stages = _Stages()
    with stages("load"):
        inputs = (data, eval_data)  # never overwritten, whatever path or link names them
        out_path = check_output_path(model, output, protected=inputs)
        report_path = None if report is None else check_output_path(model, report, protected=(*inputs, output))
        original = load_model(model, cfg.max_bytes)
        output_name = _output_name(original, cfg.output_name)
        train_ds, eval_ds = _datasets(original, data, eval_data, labels, output_name, cfg)
    with stages("repair"):
        trainable, repairs = _make_trainable(original, output_name, cfg)
        weights = _weights(model, trainable, output_name, repairs)

    from .runtime.session import make_session

    original_session = make_session(original, cfg.provider)
    with stages("teacher"):
        loss, target = _loss_and_target(original_session, train_ds, output_name, cfg)
    with stages("fine-tune"):
        params, pruning, history = finetune(trainable, weights.slots, weights.params, train_ds.inputs, target,
                                            output_name, loss, cfg)
    # frozen weights are read through an Identity while training; from here on they are weights like the others
    pruned = ThawInitializers()(SetInitializers(params)(trainable).model).model
    with stages("shrink"):  # on fp32 weights, before calibration sees the graph
        # widths kept at multiples of 8: onnxruntime's int8 kernels run them ~10 % faster (benchmarks/speed_size.py)
        shrunk = ShrinkDeadUnits(multiple=8)(pruned).model if cfg.shrink else pruned
    with stages("quantize"):
        quantized = _quantize(shrunk, train_ds, cfg) if cfg.quantize == "int8" else shrunk
    with stages("encode"):
        onnx.checker.check_model(quantized)  # the checker-valid form, before the (possibly opt-in) sparse encoding
        index_dtype = np.int32 if cfg.sparse_index == "int32" else np.int64
        final = SparsifyInitializers(index_dtype=index_dtype)(quantized).model
        if cfg.sparse_index == "int64":  # int32 indices: onnx.checker refuses them; the verify stage loads the file
            onnx.checker.check_model(final)
    # Outputs are staged next to their destinations and renamed into place only once verified and measured,
    # so a run that fails at any point leaves no partial output and keeps any previous one.
    with StagedFile(out_path, final.SerializeToString(), "model") as staged:
        rep = _report(model, out_path, cfg, loss, pruning, weights.slots, history, eval_ds, staged.size)
        _add_untrained(rep, weights, pruned, repairs)
        rep.units = _unit_counts(pruned, shrunk)
        with stages("verify"):
            measure(rep, original_session, make_session(staged.path, cfg.provider), eval_ds, output_name)
        from .passes.sizes import storage_report

        storage = storage_report(final, staged.path)
        rep.storage = storage.to_dict()["totals"] | {"notes": list(storage.notes)}
        rep.stage_seconds = stages.seconds
        if report_path is None:
            staged.commit()
            return rep
        with StagedFile(report_path, rep.to_json().encode(), "report") as staged_report:
            staged.commit()
            staged_report.commit()
    return rep


def _make_trainable(model: onnx.ModelProto, output_name: str, cfg: CompressConfig):
    """(the model to fine-tune, RepairLog or None): repaired so onnxruntime-training can differentiate it, weights no
    gradient reaches frozen and pruned one-shot (trainability.py). --no-repair trains the graph as given."""
    if not cfg.repair:
        return model, None
    from .trainability import prepare_for_training

    repaired, log = prepare_for_training(model, output_name, sparsity=cfg.sparsity if cfg.alpha is None else 0.0)
    if log.verification is not None and not log.verification["ok"]:
        raise TrainingError(f"the repaired graph computes different outputs ({log.verification['detail']}) and no "
                            "single repair was to blame; rerun with --no-repair to train the graph as given")
    return repaired, log


@dataclass
class _Weights:
    """Which prunable weights get what."""

    slots: list  # fine-tuned and pruned (WeightSlot)
    params: list[str]  # every tensor fine-tuning updates: those weights and the biases on the trained output's path
    frozen: list  # no gradient reaches them: pruned one-shot by the repair stage
    off_path: list  # not on the trained output's path: neither trained nor pruned, the other outputs keep them


def _weights(path, trainable: onnx.ModelProto, output_name: str, repairs) -> _Weights:
    on_path = reaches(trainable, output_name)
    slots = [s for s in find_prunable_weights(trainable) if s.name in on_path]
    frozen_names = set(repairs.frozen) if repairs is not None else set()
    thawed = find_prunable_weights(ThawInitializers()(trainable).model)
    frozen = [s for s in thawed if s.name in frozen_names]
    if not slots:
        why = f"; {len(frozen)} are frozen because no gradient reaches them" if frozen else ""
        raise ConfigError(f"{path}: no trainable prunable weights on the path to output {output_name!r} (float "
                          f"initializers feeding MatMul, Gemm or Conv){why}")
    params = [p for p in find_trainable_params(trainable) if p in on_path]
    return _Weights(slots, params, frozen, [s for s in thawed if s.name not in on_path])


def _add_untrained(rep: Report, weights: _Weights, model: onnx.ModelProto, repairs) -> None:
    """Frozen weights join the per-tensor table and the global sparsity; weights off the trained output's path are
    listed, outside the sparsity; the repair log goes into the report."""
    rep.trainability = None if repairs is None else repairs.to_dict()
    frozen, off_path = weights.frozen, weights.off_path
    inits = {t.name: t for t in model.graph.initializer}
    zeros = {s.name: int((numpy_helper.to_array(inits[s.name]) == 0).sum()) for s in [*frozen, *off_path]}
    if frozen:
        pruned = rep.achieved_sparsity * rep.prunable_weights + sum(zeros[s.name] for s in frozen)
        rep.prunable_weights += sum(s.size for s in frozen)
        rep.achieved_sparsity = pruned / rep.prunable_weights
    rep.tensors += [TensorStats(s.name, list(s.shape), zeros[s.name] / s.size, role=FROZEN) for s in frozen]
    rep.tensors += [TensorStats(s.name, list(s.shape), zeros[s.name] / s.size, role=OFF_PATH) for s in off_path]


def _report(model, out_path, cfg: CompressConfig, loss, pruning: PruningResult, slots, history, eval_ds,
            bytes_after: int) -> Report:
    # with NNrelief's alpha there is no target: the report's target repeats what alpha achieved
    target_sparsity = cfg.sparsity if cfg.alpha is None else pruning.sparsity
    return Report(
        model=str(model), output=str(out_path), config=cfg.to_dict(), target_sparsity=target_sparsity,
        achieved_sparsity=pruning.sparsity, loss=loss.kind, prunable_weights=sum(s.size for s in slots),
        tensors=_tensor_stats(pruning, slots), prune_events=[vars(e) for e in pruning.events],
        bytes_before=Path(model).stat().st_size, bytes_after=bytes_after, epoch_loss=history.epoch_loss,
        eval_samples=len(eval_ds), versions=_versions(),
    )


def _datasets(model, data, eval_data, labels, output_name: str, cfg: CompressConfig):
    """(train, held-out). Labels may be only in the eval data: training then distills, evaluation has accuracy."""

    def read(source, what, require_labels):
        ds = data_mod.load(source, labels, what, require_labels=require_labels, max_bytes=cfg.max_bytes)
        return data_mod.conform(ds, model, labels, output_name)

    if eval_data is None:
        return data_mod.split(read(data, "data", True), cfg.eval_fraction, cfg.seed)
    train, held = read(data, "data", False), read(eval_data, "eval data", False)
    if labels is not None and train.labels is None and held.labels is None:
        raise data_mod.DataError(f"no array named {labels!r} in {train.origin} or {held.origin}")
    return train, held


def _unit_counts(before: onnx.ModelProto, after: onnx.ModelProto) -> dict[str, list[int]]:
    """Output units per layer before and after shrinking, for layers that lost some."""
    after_units = {s.name: s.shape[s.out_axis] for s in find_prunable_weights(after)}
    return {s.name: [s.shape[s.out_axis], after_units[s.name]] for s in find_prunable_weights(before)
            if s.name in after_units and after_units[s.name] != s.shape[s.out_axis]}


def _output_name(model: onnx.ModelProto, wanted: str | None) -> str:
    names = [o.name for o in model.graph.output]
    if wanted is None:
        return names[0]
    if wanted not in names:
        raise ConfigError(f"--output-name {wanted!r} is not a model output (outputs: {', '.join(names)})")
    return wanted


def _loss_and_target(session, ds: data_mod.Dataset, output_name: str, cfg: CompressConfig):
    """Cross-entropy on labels; without labels, distillation from the original model's outputs."""
    from .runtime.evaluate import predict
    from .runtime.losses import LossSpec, distillation_loss

    if ds.labels is not None:
        return LossSpec("cross_entropy"), ds.labels
    teacher = predict(session, ds, output_name)
    try:
        loss = distillation_loss(teacher, cfg.distill)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return loss, loss.targets(teacher)


def _quantize(model: onnx.ModelProto, ds: data_mod.Dataset, cfg: CompressConfig) -> onnx.ModelProto:
    from .passes.quantize import InsertQDQ, activation_tensors
    from .runtime.calibrate import collect_ranges

    ranges = collect_ranges(
        model, ds.batches(64, limit=cfg.calibration_samples), activation_tensors(model), cfg.provider
    )
    return Sequential([InsertQDQ(ranges)])(model).model


def _tensor_stats(pruning: PruningResult, slots) -> list[TensorStats]:
    stats = []
    for s in slots:
        keep = pruning.masks[s.name]
        flips = pruning.flips[s.name] if pruning.flips is not None else None
        stats.append(
            TensorStats(
                name=s.name, shape=list(s.shape), sparsity=float((~keep).mean()),
                mean_flips=None if flips is None else float(flips.mean()),
                flipped_fraction=None if flips is None else float((flips > 0).mean()),
            )
        )
    return stats


def _versions() -> dict:
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}
