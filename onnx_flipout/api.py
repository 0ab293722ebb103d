"""`compress`: fine-tune with pruning in onnxruntime-training, then quantize and store sparse, and measure it all.

Stages: load and check -> (teacher outputs when there are no labels) -> fine-tune with the pruning hook ->
write the masked weights back -> calibrate and insert QDQ -> sparse storage -> save atomically -> verify and measure.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from . import data as data_mod
from .config import CompressConfig
from .errors import ConfigError
from .model_io import StagedFile, check_output_path, load_model
from .passes import Sequential
from .passes.prunable import find_prunable_weights, find_trainable_params
from .passes.shrink import ShrinkDeadUnits
from .passes.sparse import SparsifyInitializers
from .passes.weights import SetInitializers
from .pruning.criteria import Criterion, make_criterion
from .pruning.pruner import Probes, Pruner, PruningResult
from .pruning.scores import GRADIENTS, LAYER_INPUTS
from .report import Report, TensorStats


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
        slots = find_prunable_weights(original)
        if not slots:
            raise ConfigError(f"{model}: no prunable weights (float initializers feeding MatMul, Gemm or Conv)")

    from .runtime.session import make_session

    original_session = make_session(original, cfg.provider)
    with stages("teacher"):
        loss, target = _loss_and_target(original_session, train_ds, output_name, cfg)
    with stages("fine-tune"):
        params, pruning, history = _finetune(original, train_ds.inputs, target, output_name, loss, cfg)
    pruned = SetInitializers(params)(original).model
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
        rep = _report(model, out_path, cfg, loss, pruning, slots, history, eval_ds, staged.size)
        rep.units = _unit_counts(pruned, shrunk)
        with stages("verify"):
            _measure(rep, original_session, make_session(staged.path, cfg.provider), eval_ds, output_name)
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


def _finetune(model, inputs, target, output_name, loss, cfg: CompressConfig):
    from .runtime.artifacts import build_artifacts
    from .runtime.trainer import Trainer, TrainSettings

    slots = find_prunable_weights(model)
    criterion = make_criterion(cfg.criterion, cfg.criterion_options())
    settings = TrainSettings(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.learning_rate, momentum=cfg.momentum,
        weight_decay=cfg.weight_decay, seed=cfg.seed, progress=cfg.progress, checkpoint_every=cfg.checkpoint_every,
    )
    store, snapshot = _checkpoints(model, inputs, target, cfg)  # before any work: a bad checkpoint fails fast
    with tempfile.TemporaryDirectory(prefix="onnx-flipout-") as tmp:
        arts = build_artifacts(
            model, find_trainable_params(model), output_name, loss, cfg.optimizer, Path(tmp), cfg.weight_decay
        )
        trainer = Trainer(arts, settings, checkpoints=store, resume=snapshot)
        pruner = Pruner(
            [s.name for s in slots], criterion.score, criterion.schedule, criterion.selection,
            noise=cfg.noise, seed=cfg.seed, probes=_probes(criterion, trainer, model, slots, inputs, target, cfg),
        )
        try:
            history = trainer.fit(inputs, target, [pruner])
        except ValueError as exc:  # e.g. too few steps for the schedule
            raise ConfigError(str(exc)) from None
        params = trainer.parameters()
    return params, pruner.result(), history


def _checkpoints(model, inputs, target, cfg: CompressConfig):
    """(store, snapshot to resume from) for --checkpoint-dir, else (None, None). A checkpoint records fingerprints of
    the validated model (external data inlined) and of the training data and targets, and the options that shape
    training (config.RESUME_FIELDS); resuming refuses any difference."""
    if cfg.checkpoint_dir is None:
        return None, None
    import onnxruntime

    from .runtime.checkpoint import CheckpointStore, data_fingerprint, sha256_of

    identity = {"model_sha256": sha256_of([model.SerializeToString()]), "data_sha256": data_fingerprint(inputs, target),
                "config": cfg.resume_key(), "onnxruntime": onnxruntime.__version__}
    store = CheckpointStore(cfg.checkpoint_dir, identity)
    if cfg.resume:
        return store, store.load()
    store.check_fresh()
    return store, None


def _probes(criterion: Criterion, trainer, model, slots, inputs, target, cfg: CompressConfig) -> Probes:
    """What the criterion's score needs from the runtime, measured on a seeded sample of the training data
    (up to calibration_samples): SNIP's gradients and NNrelief's layer inputs."""
    needs = criterion.score.needs
    if not needs & {GRADIENTS, LAYER_INPUTS}:
        return Probes()
    n = len(target)
    # a random sample, not the first rows: user data may be sorted by class
    sample = np.sort(np.random.default_rng([cfg.seed, 1]).permutation(n)[: min(n, cfg.calibration_samples)])
    probes = Probes()
    if GRADIENTS in needs:
        from .runtime.gradients import mean_gradients

        batches = [sample[i : i + cfg.batch_size] for i in range(0, len(sample), cfg.batch_size)]
        names = [s.name for s in slots]
        probes.gradients = lambda: mean_gradients(trainer, inputs, target, batches, names)
    if LAYER_INPUTS in needs:
        from .runtime.activations import layer_inputs

        feeds = [{k: v[sample[i : i + 256]] for k, v in inputs.items()} for i in range(0, len(sample), 256)]
        probes.layer_inputs = lambda: layer_inputs(
            SetInitializers(trainer.parameters())(model).model, slots, feeds, cfg.provider
        )
    return probes


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


def _measure(rep: Report, before, after, eval_ds: data_mod.Dataset, output_name: str) -> None:
    from .runtime.bench import compare_latency
    from .runtime.evaluate import accuracy, agreement, predict

    ref, out = predict(before, eval_ds, output_name), predict(after, eval_ds, output_name)
    if eval_ds.labels is not None:
        rep.accuracy_before, rep.accuracy_after = accuracy(ref, eval_ds.labels), accuracy(out, eval_ds.labels)
    rep.agreement = agreement(ref, out)
    for batch in sorted({1, min(32, len(eval_ds))}):
        feeds = next(eval_ds.batches(batch))
        t = compare_latency({"original": before, "compressed": after}, feeds)
        rep.latency_ms[f"batch {batch}"] = {k: v * 1e3 for k, v in t.items()}


def _versions() -> dict:
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}
