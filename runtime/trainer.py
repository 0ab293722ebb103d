"""The fine-tuning loop over onnxruntime-training's Module / Optimizer / CheckpointState.

It runs steps and calls hooks (onnx_flipout.hooks.TrainingHook) with zero-copy views of the parameters; it knows
nothing about pruning. onnxruntime's SGD has no momentum, so momentum and weight decay are applied here to the
gradient views before onnxruntime's plain SGD step: buf = mu * buf + (g + wd * w); w -= lr * buf, which is exactly
torch.optim.SGD (dampening 0, no Nesterov).

Checkpoints (runtime/checkpoint.py): every `checkpoint_every` steps (default: every epoch) and after the last step,
onnxruntime's state with the optimizer state, the momentum buffers, the loss history and each hook's state_dict()
are saved. A resumed run restores them and continues with the next batch of the same seeded order, so on CPU it ends
bit for bit where the uninterrupted run ends. A checkpoint is only taken on finite weights: after a non-finite loss
the last one kept is a good one.
"""

from __future__ import annotations

import errno
import math
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from onnx_flipout import kernels
from onnx_flipout.errors import CheckpointError, TrainingError
from onnx_flipout.hooks import ParamView, TrainingHook

from .artifacts import TrainingArtifacts
from .checkpoint import CheckpointStore, Snapshot


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
    checkpoint_every: int | None = None  # steps between checkpoints when the trainer has a store (None: each epoch)


@dataclass
class TrainHistory:
    steps: int = 0
    epoch_loss: list[float] = field(default_factory=list)


class _Momentum:
    """torch-style SGD momentum and weight decay, applied to onnxruntime's gradient buffers in place."""

    def __init__(self, params: dict[str, ParamView], momentum: float, weight_decay: float):
        self.mu, self.wd = momentum, weight_decay
        self.buf = {n: None for n in params}
        self._shapes = {n: p.data.shape for n, p in params.items()}

    def apply(self, params: dict[str, ParamView]) -> None:
        for name, p in params.items():
            buf = self.buf[name]
            if self.mu and buf is not None and p.grad.dtype == np.float32:
                # one compiled pass instead of three or four numpy ones, bit for bit the same (tests/test_kernels.py)
                kernels.momentum(kernels.flat(p.grad), kernels.flat(buf), kernels.flat(p.data), np.float32(self.mu),
                                 np.float32(self.wd))
            else:
                self.apply_numpy(name, p)

    def apply_numpy(self, name: str, p: ParamView) -> None:
        """The same update in numpy: the first step (it creates the buffer), other dtypes, the benchmark's reference."""
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

    def state_dict(self) -> dict:
        return {n: None if b is None else b.copy() for n, b in self.buf.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.buf):
            raise ValueError(f"saved momentum buffers are for {sorted(state)}, not {sorted(self.buf)}")
        for name, b in state.items():
            if b is not None and np.shape(b) != self._shapes[name]:
                raise ValueError(f"saved momentum of {name} has shape {np.shape(b)}, not {self._shapes[name]}")
            self.buf[name] = None if b is None else np.array(b, dtype=np.float32)


def batch_order(n: int, batch_size: int, epoch: int, seed: int) -> list[np.ndarray]:
    """Seeded shuffled batches of sample indices for one epoch (the last one may be smaller)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def _batches(n: int, batch_size: int, seed: int, per_epoch: int, first: int, total: int):
    """(step, epoch, sample indices) for steps first..total: a resumed run continues the uninterrupted run's order."""
    order = None
    for step in range(first, total + 1):
        epoch, batch = divmod(step - 1, per_epoch)
        if order is None or batch == 0:
            order = batch_order(n, batch_size, epoch, seed)
        yield step, epoch, order[batch]


class Trainer:
    """`checkpoints`: where to save them (None: never); `resume`: a validated checkpoint to continue from."""

    momentum_type = _Momentum  # benchmarks/flip_hook_cost.py swaps in the numpy version to measure the kernel

    def __init__(self, artifacts: TrainingArtifacts, settings: TrainSettings,
                 checkpoints: CheckpointStore | None = None, resume: Snapshot | None = None):
        import onnxruntime as ort
        from onnxruntime.training.api import CheckpointState, Module, Optimizer

        self.settings, self.checkpoints, self.resume = settings, checkpoints, resume
        self.last_checkpoint = resume.folder if resume is not None else None
        self.state = _load_state(CheckpointState, resume.ort_state if resume is not None else artifacts.checkpoint,
                                 resume is not None)
        opts = ort.SessionOptions()
        # Idle onnxruntime threads spin-wait by default and then compete with the numpy hooks that run between steps
        # (on 2 cores the hook cost doubled); benchmarks/flip_hook_cost.py measures it.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings.spin else "0")
        self.module = Module(str(artifacts.training_model), self.state, str(artifacts.eval_model), session_options=opts)
        # built on a state loaded with its optimizer state, the Optimizer continues from it (AdamW moments, step)
        self.optimizer = Optimizer(str(artifacts.optimizer_model), self.module)
        self.optimizer.set_learning_rate(settings.lr)
        self.momentum_sgd = artifacts.optimizer == "sgd"
        # iterating Parameters yields (name, Parameter); .data/.grad are zero-copy views of the live buffers
        self.params = {n: ParamView(p.data, p.grad) for n, p in self.state.parameters if p.requires_grad}

    def fit(self, inputs: dict[str, np.ndarray], target: np.ndarray, hooks: list[TrainingHook] = ()) -> TrainHistory:
        s = self.settings
        n = len(target)
        per_epoch = math.ceil(n / s.batch_size)
        total = per_epoch * s.epochs
        feed_names = self.module.input_names()
        target_name = next(name for name in feed_names if name not in inputs)
        momentum = self.momentum_type(self.params, s.momentum, s.weight_decay) if self.momentum_sgd else None
        history, losses = TrainHistory(), []  # losses: this epoch's so far
        if self.resume is not None:
            losses = self._restore(self.resume, momentum, history, per_epoch, total)
        self._start_hooks(hooks, total)
        self.module.train()
        bar = tqdm(total=total, initial=history.steps, desc="fine-tuning", unit="step", disable=not s.progress,
                   leave=False)
        try:
            for step, epoch, idx in _batches(n, s.batch_size, s.seed, per_epoch, history.steps + 1, total):
                feeds = {**{k: v[idx] for k, v in inputs.items()}, target_name: target[idx]}
                loss = self._step(step, [feeds[name] for name in feed_names], hooks, momentum)
                losses.append(loss)
                history.steps = step
                if step % per_epoch == 0:
                    history.epoch_loss.append(float(np.mean(losses)))
                    losses = []
                bar.update(1)
                if step % 10 == 0 or step == total:
                    status = {k: v for h in hooks for k, v in h.status().items()}
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}", **status, refresh=False)
                if self.checkpoints is not None and (step % (s.checkpoint_every or per_epoch) == 0 or step == total):
                    self._save(step, total, per_epoch, history, losses, momentum, hooks)
        finally:
            bar.close()
        return history

    def _step(self, step: int, feeds: list[np.ndarray], hooks, momentum: _Momentum | None) -> float:
        loss = float(np.asarray(self.module(*feeds)).reshape(-1)[0])
        if not math.isfinite(loss):
            raise TrainingError(f"loss became {loss} at step {step}: lower the learning rate (--lr){self._kept()}")
        for h in hooks:
            h.before_step(step, self.params)
        if momentum is not None:
            momentum.apply(self.params)
        self.optimizer.step()
        self.module.lazy_reset_grad()
        for h in hooks:
            h.after_step(step, self.params)
        return loss

    def _kept(self) -> str:
        if self.checkpoints is None:
            return ""
        if self.last_checkpoint is None:
            return f"; no checkpoint had been written to {self.checkpoints.folder} yet"
        return f"; the last good checkpoint is kept in {self.last_checkpoint}"

    def _start_hooks(self, hooks, total: int) -> None:
        """on_start for every hook; when resuming, each stateful hook first gets its saved state (hooks.py)."""
        saved = self._saved_hook_states(hooks) if self.resume is not None else [None] * len(hooks)
        for h, state in zip(hooks, saved):
            try:
                if state is not None:
                    h.load_state_dict(state)
                h.on_start(self.params, total)
            except (ValueError, KeyError, TypeError) as exc:
                if self.resume is None:
                    raise
                raise CheckpointError(f"{self.resume.folder}: the saved {type(h).__name__} state does not fit this "
                                      f"run ({type(exc).__name__}: {exc})") from None

    def _saved_hook_states(self, hooks) -> list:
        saved, folder = self.resume.hooks, self.resume.folder
        kinds = [e.get("type") if isinstance(e, dict) else None for e in saved]
        if kinds != [type(h).__name__ for h in hooks]:
            raise CheckpointError(f"{folder}: saved with hooks {kinds}, this run has {[type(h).__name__ for h in hooks]}")
        states = [e.get("state") for e in saved]
        for h, state in zip(hooks, states):
            if (state is None) != (getattr(h, "load_state_dict", None) is None):
                raise CheckpointError(f"{folder}: the saved {type(h).__name__} state does not fit this run's hook")
        return states

    def _restore(self, snap: Snapshot, momentum: _Momentum | None, history: TrainHistory, per_epoch: int,
                 total: int) -> list[float]:
        """Trainer state from the checkpoint; returns the current epoch's losses so far."""
        t = snap.trainer
        try:
            step, epoch_loss, losses, saved_momentum = int(t["step"]), t["epoch_loss"], t["losses"], t["momentum"]
            if snap.total_steps != total or step != snap.step or not 0 < step <= total:
                raise ValueError(f"step {step} of {snap.total_steps}, this run has {total} steps")
            if len(epoch_loss) != step // per_epoch or len(losses) != step % per_epoch:
                raise ValueError("loss history does not match the step")
            if (saved_momentum is None) != (momentum is None):
                raise ValueError("saved with another optimizer")
            if momentum is not None:
                momentum.load_state_dict(saved_momentum)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{snap.folder}: the trainer state does not fit this run ({exc})") from None
        history.steps, history.epoch_loss = step, [float(x) for x in epoch_loss]
        return [float(x) for x in losses]

    def _save(self, step: int, total: int, per_epoch: int, history: TrainHistory, losses: list[float],
              momentum: _Momentum | None, hooks) -> None:
        bad = [n for n, p in self.params.items() if not np.isfinite(p.data).all()]
        if bad:  # never replace a good checkpoint with a poisoned one
            raise TrainingError(f"weights of {', '.join(bad[:3])} became non-finite by step {step}: lower the "
                                f"learning rate (--lr){self._kept()}")
        trainer = {"step": step, "epoch": step // per_epoch, "batch": step % per_epoch,
                   "epoch_loss": list(history.epoch_loss), "losses": list(losses),
                   "momentum": momentum.state_dict() if momentum is not None else None}
        states = [{"type": type(h).__name__, "state": h.state_dict() if hasattr(h, "state_dict") else None}
                  for h in hooks]
        self.last_checkpoint = self.checkpoints.save(step, total, self._write_ort_state, trainer, states)

    def _write_ort_state(self, path) -> None:
        from onnxruntime.training.api import CheckpointState

        try:
            CheckpointState.save_checkpoint(self.state, str(path), include_optimizer_state=True)
        except Exception as exc:  # onnxruntime raises its own types; the store reports OSErrors with what it kept
            raise OSError(errno.EIO, f"onnxruntime could not save its state: {exc}") from exc

    def parameters(self) -> dict[str, np.ndarray]:
        """Copies of the trained parameters."""
        return {n: p.data.copy() for n, p in self.params.items()}


def _load_state(checkpoint_state, path, resuming: bool):
    try:
        return checkpoint_state.load_checkpoint(str(path))
    except Exception as exc:  # the files were checksummed, so this is another onnxruntime build's format
        if not resuming:
            raise
        raise CheckpointError(f"{path.parent}: onnxruntime cannot load {path.name} "
                              f"({type(exc).__name__}: {exc})") from None
