"""The trainer against oracles: torch.optim.SGD for momentum, and gradient views that really are live."""

import numpy as np
import pytest
import torch

from onnx_flipout.hooks import ParamView
from onnx_flipout.runtime.trainer import _Momentum, batch_order


def test_momentum_and_weight_decay_match_torch_sgd():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5, 3)).astype(np.float32)
    grads = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(5)]
    tw = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = torch.optim.SGD([tw], lr=0.1, momentum=0.9, weight_decay=0.01)
    view = ParamView(w0.copy(), np.zeros_like(w0))
    mom = _Momentum({"w": view}, 0.9, 0.01)
    for g in grads:
        tw.grad = torch.from_numpy(g.copy())
        opt.step()
        view.grad[...] = g
        mom.apply({"w": view})
        view.data -= 0.1 * view.grad  # what onnxruntime's plain SGD step does
    np.testing.assert_allclose(view.data, tw.detach().numpy(), rtol=1e-6, atol=1e-6)


def test_batch_order_is_seeded_and_covers_every_sample():
    a, b = batch_order(70, 32, epoch=3, seed=1), batch_order(70, 32, epoch=3, seed=1)
    assert all((x == y).all() for x, y in zip(a, b))
    assert sorted(np.concatenate(a).tolist()) == list(range(70)) and [len(x) for x in a] == [32, 32, 6]
    assert not (batch_order(70, 32, epoch=4, seed=1)[0] == a[0]).all()


@pytest.mark.training
def test_hooks_see_live_gradients_and_weights(digits_files, tmp_path):
    import onnx

    from onnx_flipout.passes.prunable import find_trainable_params
    from onnx_flipout.runtime.artifacts import build_artifacts
    from onnx_flipout.runtime.losses import LossSpec
    from onnx_flipout.runtime.trainer import Trainer, TrainSettings

    model = onnx.load(str(digits_files["model"]))
    arts = build_artifacts(model, find_trainable_params(model), "logits", LossSpec("cross_entropy"), "sgd", tmp_path)
    trainer = Trainer(arts, TrainSettings(epochs=1, lr=0.1, momentum=0.0, progress=False))
    seen = []

    class Probe:
        def on_start(self, params, total):
            self.total = total

        def before_step(self, step, params):
            p = params["fc1.weight"]
            self.w, self.g = p.data.copy(), p.grad.copy()
            assert np.abs(self.g).sum() > 0

        def after_step(self, step, params):  # plain SGD: w_new = w - lr * g, visible through the same view
            np.testing.assert_allclose(params["fc1.weight"].data, self.w - 0.1 * self.g, rtol=1e-5, atol=1e-7)
            seen.append(step)

        def status(self):
            return {}

    data = np.load(digits_files["train"])
    trainer.fit({"x": data["x"][:96]}, data["y"][:96], [Probe()])
    assert seen == [1, 2, 3]
