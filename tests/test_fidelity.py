"""Fidelity: our Trainer + Pruner in onnxruntime-training against a small PyTorch FlipOut written from the paper.

Apostol et al., "FlipOut: Uncovering Redundant Weights via Sign Flipping" (2020): after every optimizer step a weight
whose sign changed has flipped once; at a pruning event the weights with the lowest |w|^p / (flips + 1) (p = 2) are
removed globally. Both sides start from the same weights (copied from the ONNX initializers; Gemm transB=1 stores
[out, in] like torch.nn.Linear), see the same batches in the same order (runtime.trainer.batch_order) and take plain
SGD steps (no momentum, no weight decay). Float32 arithmetic differs in summation order, so a weight sitting at zero
may flip on one side only: the counts must agree for >= 99.9 % of the weights, and so must the first mask.
"""

import numpy as np
import pytest
import torch
from onnx import numpy_helper

from onnx_flipout.demo import build_mlp, load_digits
from onnx_flipout.passes.prunable import find_prunable_weights, find_trainable_params
from onnx_flipout.pruning.pruner import Pruner
from onnx_flipout.pruning.schedule import GeometricSchedule
from onnx_flipout.pruning.scores import FlipOutScore

pytestmark = pytest.mark.training

LR, BATCH, SEED = 0.2, 32, 0  # a large plain-SGD step: about 9 % of the weights flip in the first epoch


class _Snapshot:
    """A hook after the pruner: copies its flip counts and masks right after step `at`."""

    def __init__(self, pruner: Pruner, at: int):
        self.pruner, self.at = pruner, at
        self.flips = self.keep = None

    def on_start(self, params, total_steps):
        pass

    def before_step(self, step, params):
        pass

    def after_step(self, step, params):
        if step == self.at:
            self.flips = {n: c.copy() for n, c in self.pruner.flips.counts.items()}
            self.keep = self.pruner.masks.state()

    def status(self):
        return {}


def _onnxruntime_run(model, x, y, names, steps_per_epoch, tmp_path):
    from onnx_flipout.runtime.artifacts import build_artifacts
    from onnx_flipout.runtime.losses import LossSpec
    from onnx_flipout.runtime.trainer import Trainer, TrainSettings

    arts = build_artifacts(model, find_trainable_params(model), "logits", LossSpec("cross_entropy"), "sgd", tmp_path)
    trainer = Trainer(arts, TrainSettings(epochs=2, batch_size=BATCH, lr=LR, momentum=0.0, seed=SEED, progress=False))
    # target 0.5 with rate 0.5: one event, at step total // 2 = the end of the first epoch
    pruner = Pruner(names, FlipOutScore(2.0), GeometricSchedule(0.5))
    snap = _Snapshot(pruner, at=steps_per_epoch)
    trainer.fit({"x": x}, y, [pruner, snap])
    assert [e.step for e in pruner.log] == [steps_per_epoch]
    return snap.flips, snap.keep


def _torch_flipout(init, x, y, names, n_prune):
    """One epoch of plain SGD counting sign flips, then FlipOut's first global prune; written from the paper."""
    from onnx_flipout.runtime.trainer import batch_order

    p = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    flips = {n: torch.zeros_like(p[n], dtype=torch.int64) for n in names}
    for idx in batch_order(len(y), BATCH, 0, SEED):
        h = torch.relu(torch.tensor(x[idx]) @ p["fc1.weight"].T + p["fc1.bias"])
        loss = torch.nn.functional.cross_entropy(h @ p["fc2.weight"].T + p["fc2.bias"], torch.tensor(y[idx]))
        for t in p.values():
            t.grad = None
        loss.backward()
        with torch.no_grad():
            before = {n: p[n] < 0 for n in names}
            for t in p.values():
                t -= LR * t.grad
            for n in names:
                flips[n] += (p[n] < 0) != before[n]
    with torch.no_grad():
        saliency = torch.cat([(p[n].abs() ** 2 / (flips[n] + 1)).reshape(-1) for n in names])
        pruned = torch.zeros_like(saliency, dtype=torch.bool)
        pruned[torch.argsort(saliency, stable=True)[:n_prune]] = True
    keep, start = {}, 0
    for n in names:
        size = p[n].numel()
        keep[n] = (~pruned[start : start + size]).reshape(p[n].shape).numpy()
        start += size
    return {n: f.numpy() for n, f in flips.items()}, keep, {n: p[n].detach().numpy() for n in names}


def test_flip_counts_and_first_mask_agree_with_a_pytorch_flipout(tmp_path):
    model = build_mlp((64, 32, 10), seed=SEED)
    x, y = load_digits()[:2]
    names = [s.name for s in find_prunable_weights(model)]
    init = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    steps_per_epoch = -(-len(y) // BATCH)
    n_weights = sum(init[n].size for n in names)

    ort_flips, ort_keep = _onnxruntime_run(model, x, y, names, steps_per_epoch, tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: torch's thread pool costs 100x the arithmetic here (3 s vs 0.02 s)
    try:
        ref_flips, ref_keep, ref_w = _torch_flipout(init, x, y, names, round(n_weights * 0.5))
    finally:
        torch.set_num_threads(threads)

    flips_agree = sum(int((ort_flips[n] == ref_flips[n]).sum()) for n in names) / n_weights
    mask_agree = sum(int((ort_keep[n] == ref_keep[n]).sum()) for n in names) / n_weights
    flipped = sum(int((ref_flips[n] > 0).sum()) for n in names) / n_weights
    magnitude = np.concatenate([np.abs(ref_w[n]).reshape(-1) for n in names])
    by_magnitude = np.zeros(n_weights, bool)
    by_magnitude[np.argsort(magnitude, kind="stable")[: round(n_weights * 0.5)]] = True
    flipout_pruned = np.concatenate([~ref_keep[n].reshape(-1) for n in names])
    differ = int((by_magnitude != flipout_pruned).sum())
    print(f"flip counts agree {flips_agree:.5f}, first mask agrees {mask_agree:.5f}; {flipped:.3f} of {n_weights} "
          f"weights flipped at least once; FlipOut's mask differs from magnitude's in {differ} places")
    # the comparison means something: many weights flipped, and the flips changed which weights were pruned
    assert flipped > 0.05 and differ > 10
    assert flips_agree >= 0.999
    assert mask_agree >= 0.999
