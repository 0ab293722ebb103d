"""Options of `compress`, validated once at the door."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields

from .errors import ConfigError
from .pruning.criteria import ALPHA_CRITERIA, CriterionOptions
from .pruning.criteria import CRITERIA as _CRITERIA_TABLE
from .validate import DEFAULT_MAX_BYTES

CRITERIA = tuple(_CRITERIA_TABLE)
QUANTIZE = ("int8", "none")
OPTIMIZERS = ("sgd", "adamw")
PROVIDERS = ("cpu", "cuda")
DISTILL = ("auto", "logits", "mse")
SPARSE_INDEX = ("int64", "int32")
# What a resumed run must share with the run that saved the checkpoint: everything that shapes training (the model
# and data are fingerprinted separately). Left out on purpose: quantize, provider, max_bytes and progress, which act
# after training or not on its numbers, so a resume may change them.
RESUME_FIELDS = ("sparsity", "criterion", "epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay",
                 "seed", "flipout_p", "noise", "prune_rate", "alpha", "prune_events", "eval_fraction",
                 "calibration_samples", "output_name", "distill", "repair")
# Tuned on the digits MLP (0.05 also holds 99 % sparsity there); lower it for large pretrained models.
DEFAULT_LR = {"sgd": 0.05, "adamw": 1e-3}


@dataclass(frozen=True)
class CompressConfig:
    sparsity: float = 0.9
    criterion: str = "flipout"
    quantize: str = "int8"
    epochs: int = 20
    batch_size: int = 32
    lr: float | None = None  # None: DEFAULT_LR for the optimizer
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    provider: str = "cpu"
    flipout_p: float = 2.0
    noise: float = 0.0
    prune_rate: float = 0.5
    alpha: float | None = None  # NNrelief: per-neuron keep fraction of importance, instead of a target sparsity
    prune_events: int | None = None  # NNrelief with alpha: number of prune events (default 4)
    eval_fraction: float = 0.2
    calibration_samples: int = 512
    output_name: str | None = None  # which model output to train on (default: the first)
    distill: str = "auto"  # loss without labels: "logits" (soft cross-entropy), "mse", or auto by output shape
    repair: bool = True  # make the graph trainable first (trainability.py): repairs checked exact, fallback freezing
    shrink: bool = True  # remove output units whose weights in or out are all zero (outputs unchanged)
    sparse_index: str = "int64"  # int32: smaller sparse tensors; onnxruntime loads them, onnx.checker refuses them
    max_bytes: int = DEFAULT_MAX_BYTES  # budget for what a model or data file may declare (checked before reading)
    progress: bool = True
    checkpoint_dir: str | None = None  # save fine-tuning checkpoints here (runtime/checkpoint.py)
    checkpoint_every: int | None = None  # steps between checkpoints (None: once per epoch)
    resume: bool = False  # continue from the latest checkpoint in checkpoint_dir

    def __post_init__(self):
        _in_range("sparsity", self.sparsity, 0.0, 1.0, hi_open=True)
        _choice("criterion", self.criterion, CRITERIA)
        _choice("quantize", self.quantize, QUANTIZE)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("provider", self.provider, PROVIDERS)
        _choice("distill", self.distill, DISTILL)
        _choice("sparse-index", self.sparse_index, SPARSE_INDEX)
        _positive_int("epochs", self.epochs)
        _positive_int("batch-size", self.batch_size)
        _positive_int("calibration-samples", self.calibration_samples)
        _positive_int("max-bytes", self.max_bytes)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"--seed must be an integer >= 0, got {self.seed!r}")
        if self.lr is not None:
            _finite_positive("lr", self.lr)
        _in_range("momentum", self.momentum, 0.0, 1.0, hi_open=True)
        _in_range("weight-decay", self.weight_decay, 0.0, 1.0, hi_open=True)
        _in_range("prune-rate", self.prune_rate, 0.0, 1.0, lo_open=True, hi_open=True)
        _in_range("eval-fraction", self.eval_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
        _finite_positive("flipout-p", self.flipout_p)
        if not (self.noise == 0 or _is_finite_number(self.noise) and self.noise > 0):
            raise ConfigError(f"--noise must be a finite number >= 0, got {self.noise!r}")
        self._check_alpha()
        self._check_checkpoints()

    def _check_checkpoints(self) -> None:
        if self.checkpoint_dir is not None:
            if not isinstance(self.checkpoint_dir, (str, os.PathLike)):
                raise ConfigError(f"--checkpoint-dir must be a folder path, got {self.checkpoint_dir!r}")
            object.__setattr__(self, "checkpoint_dir", os.fspath(self.checkpoint_dir))  # a str, for the JSON report
        for flag, given in (("--checkpoint-every", self.checkpoint_every is not None), ("--resume", self.resume)):
            if given and self.checkpoint_dir is None:
                raise ConfigError(f"{flag} needs --checkpoint-dir (the folder the checkpoints are in)")
        if self.checkpoint_every is not None:
            _positive_int("checkpoint-every", self.checkpoint_every)
        for flag in ("resume", "repair", "shrink"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag} must be True or False, got {getattr(self, flag)!r}")

    def resume_key(self) -> dict:
        """The options a checkpoint records and a resume must match (RESUME_FIELDS, lr resolved)."""
        d = self.to_dict()
        return {k: d[k] for k in RESUME_FIELDS}

    def _check_alpha(self) -> None:
        if self.alpha is not None:
            if self.criterion not in ALPHA_CRITERIA:
                raise ConfigError(f"--alpha applies to --criterion {' or '.join(ALPHA_CRITERIA)}, "
                                  f"not {self.criterion!r}; give --sparsity instead")
            _in_range("alpha", self.alpha, 0.0, 1.0, lo_open=True)
        if self.prune_events is not None:
            if self.alpha is None:
                raise ConfigError("--prune-events sets the number of NNrelief events with --alpha; "
                                  "with --sparsity the schedule derives it")
            _positive_int("prune-events", self.prune_events)

    def criterion_options(self) -> CriterionOptions:
        return CriterionOptions(sparsity=self.sparsity, prune_rate=self.prune_rate, flipout_p=self.flipout_p,
                                alpha=self.alpha, prune_events=self.prune_events, seed=self.seed)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["lr"] = self.learning_rate
        return d


def _choice(name, value, allowed):
    if value not in allowed:
        raise ConfigError(f"--{name} {value!r} is not supported: choose one of {', '.join(allowed)}")


def _positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"--{name} must be a positive integer, got {value!r}")


def _is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _finite_positive(name, value):
    if not (_is_finite_number(value) and value > 0):
        raise ConfigError(f"--{name} must be a finite number > 0, got {value!r}")


def _in_range(name, value, lo, hi, lo_open=False, hi_open=False):
    if isinstance(value, bool):
        raise ConfigError(f"--{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{name} must be a number, got {value!r}") from None
    ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ConfigError(f"--{name} must be in {interval}, got {value!r}")
