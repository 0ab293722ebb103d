"""The fine-tuning stage of `compress`: training artifacts built guarded, the Trainer, and the pruning hook on it.

The artifacts are generated, and one training and one evaluation step run, in a child process first
(runtime/guarded.py): onnxruntime-training can kill the process on graphs it cannot differentiate, and that must
become a clear error. Training then runs here, from the files the child wrote.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .config import CompressConfig
from .errors import ConfigError
from .passes.prunable import WeightSlot
from .passes.weights import SetInitializers
from .pruning.criteria import Criterion, make_criterion
from .pruning.pruner import Probes, Pruner
from .pruning.scores import GRADIENTS, LAYER_INPUTS


def finetune(model, slots: list[WeightSlot], trainable: list[str], inputs, target, output_name, loss,
             cfg: CompressConfig):
    """(trained parameters, PruningResult, TrainHistory). `slots`: the weights to prune; `trainable`: every tensor
    fine-tuning updates (those weights and the biases on the path to `output_name`)."""
    from .runtime.guarded import guarded_build_artifacts
    from .runtime.trainer import Trainer, TrainSettings

    criterion = make_criterion(cfg.criterion, cfg.criterion_options())
    settings = TrainSettings(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.learning_rate, momentum=cfg.momentum,
        weight_decay=cfg.weight_decay, seed=cfg.seed, progress=cfg.progress, checkpoint_every=cfg.checkpoint_every,
    )
    store, snapshot = _checkpoints(model, inputs, target, cfg)  # before any work: a bad checkpoint fails fast
    first = slice(0, min(cfg.batch_size, len(target)))
    with tempfile.TemporaryDirectory(prefix="onnx-flipout-") as tmp:
        arts = guarded_build_artifacts(
            model, trainable, output_name, loss, cfg.optimizer, Path(tmp),
            {k: v[first] for k, v in inputs.items()}, target[first], cfg.weight_decay,
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
    the model as trained (validated, repaired, external data inlined) and of the training data and targets, and the
    options that shape training (config.RESUME_FIELDS); resuming refuses any difference."""
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
