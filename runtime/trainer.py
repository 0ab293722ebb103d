"""The fine-tuning loop over onnxruntime-training's Module / Optimizer / CheckpointState.

It runs steps and calls hooks (onnx_flipout.hooks.TrainingHook) with zero-copy views of the parameters; it knows
nothing about pruning. onnxruntime's SGD has no momentum, so momentum and weight decay are applied here to the
gradient views before onnxruntime's plain SGD step: buf = mu * buf + (g + wd * w); w -= lr * buf, which is exactly
torch.optim.SGD (dampening 0, no Nesterov).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from onnx_flipout.errors import TrainingError
from onnx_flipout.hooks import ParamView, TrainingHook

from .artifacts import TrainingArtifacts


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 20
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    progress: bool = True
    spin: bool = False  # let onnxruntime's idle threads spin-wait between steps


@dataclass
class TrainHistory:
    steps: int = 0
    epoch_loss: list[float] = field(default_factory=list)


class _Momentum:
    """torch-style SGD momentum and weight decay, applied to onnxruntime's gradient buffers in place."""

    def __init__(self, params: dict[str, ParamView], momentum: float, weight_decay: float):
        self.mu, self.wd = momentum, weight_decay
        self.buf = {n: None for n in params}

    def apply(self, params: dict[str, ParamView]) -> None:
        for name, p in params.items():
            g = p.grad
            if self.wd:
                g += self.wd * p.data
            if self.mu:
                buf = self.buf[name]
                if buf is None:
                    self.buf[name] = buf = g.copy()
                else:
                    buf *= self.mu
                    buf += g
                g[...] = buf


def batch_order(n: int, batch_size: int, epoch: int, seed: int) -> list[np.ndarray]:
    """Seeded shuffled batches of sample indices for one epoch (the last one may be smaller)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


class Trainer:
    def __init__(self, artifacts: TrainingArtifacts, settings: TrainSettings):
        import onnxruntime as ort
        from onnxruntime.training.api import CheckpointState, Module, Optimizer

        self.settings = settings
        self.state = CheckpointState.load_checkpoint(str(artifacts.checkpoint))
        opts = ort.SessionOptions()
        # Idle onnxruntime threads spin-wait by default and then compete with the numpy hooks that run between steps
        # (on 2 cores the hook cost doubled); benchmarks/flip_hook_cost.py measures it.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.spin else "0")
        self.module = Module(str(artifacts.training_model), self.state, str(artifacts.eval_model), session_options=opts)
        self.optimizer = Optimizer(str(artifacts.optimizer_model), self.module)
        self.optimizer.set_learning_rate(settings.lr)
        self.momentum_sgd = artifacts.optimizer == "sgd"
        # iterating Parameters yields (name, Parameter); .data/.grad are zero-copy views of the live buffers
        self.params = {n: ParamView(p.data, p.grad) for n, p in self.state.parameters if p.requires_grad}

    def fit(self, inputs: dict[str, np.ndarray], target: np.ndarray, hooks: list[TrainingHook] = ()) -> TrainHistory:
        s = self.settings
        n = len(target)
        steps_per_epoch = math.ceil(n / s.batch_size)
        total = steps_per_epoch * s.epochs
        feed_names = self.module.input_names()
        target_name = next(name for name in feed_names if name not in inputs)
        momentum = _Momentum(self.params, s.momentum, s.weight_decay) if self.momentum_sgd else None
        for h in hooks:
            h.on_start(self.params, total)
        history = TrainHistory()
        self.module.train()
        bar = tqdm(total=total, desc="fine-tuning", unit="step", disable=not s.progress, leave=False)
        try:
            for epoch in range(s.epochs):
                losses = []
                for idx in batch_order(n, s.batch_size, epoch, s.seed):
                    feeds = {**{k: v[idx] for k, v in inputs.items()}, target_name: target[idx]}
                    loss = float(np.asarray(self.module(*[feeds[name] for name in feed_names])).reshape(-1)[0])
                    if not math.isfinite(loss):
                        raise TrainingError(
                            f"loss became {loss} at step {history.steps + 1}: lower the learning rate (--lr)"
                        )
                    history.steps += 1
                    for h in hooks:
                        h.before_step(history.steps, self.params)
                    if momentum is not None:
                        momentum.apply(self.params)
                    self.optimizer.step()
                    self.module.lazy_reset_grad()
                    for h in hooks:
                        h.after_step(history.steps, self.params)
                    losses.append(loss)
                    bar.update(1)
                    if history.steps % 10 == 0 or history.steps == total:
                        status = {k: v for h in hooks for k, v in h.status().items()}
                        bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}", **status, refresh=False)
                history.epoch_loss.append(float(np.mean(losses)))
        finally:
            bar.close()
        return history

    def parameters(self) -> dict[str, np.ndarray]:
        """Copies of the trained parameters."""
        return {n: p.data.copy() for n, p in self.params.items()}
