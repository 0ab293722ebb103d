"""Every pruning criterion end to end (API and CLI, an MLP and a CNN), and the runtime probes they rely on:
layer inputs for NNrelief (oracle: torch's unfold) and gradients for SNIP (oracle: torch autograd)."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from models import mlp_gemm, mlp_matmul, random_inputs, small_cnn
from onnx import numpy_helper

from onnx_flipout import compress
from onnx_flipout.cli import main as cli_main
from onnx_flipout.demo import load_digits
from onnx_flipout.errors import ConfigError
from onnx_flipout.passes import DensifyInitializers
from onnx_flipout.passes.prunable import find_prunable_weights
from onnx_flipout.pruning.criteria import CRITERIA
from onnx_flipout.runtime.activations import conv_patch_abs_sum, layer_inputs

EPOCHS = 2  # 45 steps per epoch on digits: enough for every schedule's events


def _weights(path) -> dict[str, np.ndarray]:
    model = DensifyInitializers()(onnx.load(str(path))).model
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.fixture(scope="module")
def cnn_files(tmp_path_factory):
    """An untrained small CNN (conv4, conv8, fc) on digits as [N, 1, 8, 8], with train/test .npz files."""
    root = tmp_path_factory.mktemp("cnn")
    x_tr, y_tr, x_te, y_te = load_digits()
    paths = {"model": root / "cnn.onnx", "train": root / "train.npz", "test": root / "test.npz"}
    onnx.save(small_cnn(), str(paths["model"]))
    np.savez(paths["train"], x=x_tr.reshape(-1, 1, 8, 8), y=y_tr)
    np.savez(paths["test"], x=x_te.reshape(-1, 1, 8, 8), y=y_te)
    return paths


def _check_exact_and_zero(files, out, rep, sparsity):
    slots = find_prunable_weights(onnx.load(str(files["model"])))
    n = sum(s.size for s in slots)
    assert rep.prunable_weights == n and rep.achieved_sparsity == round(n * sparsity) / n
    w = _weights(out)
    assert sum(int((w[s.name] == 0).sum()) for s in slots) == round(n * sparsity)


@pytest.mark.training
@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("criterion", list(CRITERIA))
def test_every_criterion_through_the_api(criterion, model, digits_files, cnn_files, tmp_path):
    files = digits_files if model == "mlp" else cnn_files
    out = tmp_path / "out.onnx"
    # shrink=False: this counts the pruned zeros in the file, and shrinking removes dead units physically
    rep = compress(files["model"], out, data=files["train"], labels="y", eval_data=files["test"], sparsity=0.9,
                   quantize="none", epochs=EPOCHS, criterion=criterion, shrink=False, progress=False)
    _check_exact_and_zero(files, out, rep, 0.9)
    assert rep.config["criterion"] == criterion and rep.prune_events
    if criterion == "snip":  # one shot before the first step
        assert [e["step"] for e in rep.prune_events] == [0]


@pytest.mark.training
def test_nnrelief_with_alpha_prunes_what_alpha_says(digits_files, tmp_path):
    rep = compress(digits_files["model"], tmp_path / "a.onnx", data=digits_files["train"], labels="y",
                   quantize="none", epochs=EPOCHS, criterion="nnrelief", alpha=0.9, prune_events=2, progress=False)
    assert len(rep.prune_events) == 2 and 0.2 < rep.achieved_sparsity < 0.99
    assert all(e["threshold"] <= -0.9 for e in rep.prune_events)  # every pruned connection had a_ij >= alpha
    assert rep.target_sparsity == rep.achieved_sparsity  # no target with alpha


@pytest.mark.parametrize("kwargs,match", [
    ({"criterion": "flipout", "alpha": 0.9}, "--alpha applies to"),
    ({"criterion": "nnrelief", "alpha": 1.5}, "--alpha must be in"),
    ({"criterion": "nnrelief", "prune_events": 3}, "--prune-events"),
])
def test_alpha_options_are_checked_at_the_door(digits_files, tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        compress(digits_files["model"], tmp_path / "x.onnx", data=digits_files["train"], labels="y", **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.training
@pytest.mark.parametrize("criterion", list(CRITERIA))
def test_every_criterion_through_the_cli(criterion, cnn_files, tmp_path, capsys):
    out = tmp_path / "c.onnx"
    code = cli_main(["compress", str(cnn_files["model"]), "-o", str(out), "--data", str(cnn_files["train"]),
                     "--labels", "y", "--eval-data", str(cnn_files["test"]), "--sparsity", "0.75",
                     "--quantize", "none", "--epochs", "1", "--criterion", criterion, "--no-progress"])
    assert code == 0 and "achieved 0.7500" in capsys.readouterr().out and out.exists()


@pytest.mark.training
def test_cli_process_with_nnrelief_alpha(digits_files, tmp_path):
    out = tmp_path / "n.onnx"
    proc = subprocess.run([sys.executable, "-m", "onnx_flipout", "compress", str(digits_files["model"]), "-o", str(out),
                           "--data", str(digits_files["train"]), "--labels", "y", "--quantize", "none", "--epochs", "1",
                           "--criterion", "nnrelief", "--alpha", "0.95", "--prune-events", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "(nnrelief," in proc.stdout and out.exists()


def test_cli_alpha_with_another_criterion_is_a_config_error(digits_files, tmp_path, capsys):
    out = tmp_path / "n.onnx"
    code = cli_main(["compress", str(digits_files["model"]), "-o", str(out), "--data", str(digits_files["train"]),
                     "--labels", "y", "--criterion", "random", "--alpha", "0.9"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--alpha applies to" in err[0] and not out.exists()


# ------------------------------------------------------------------------------------------------ runtime probes


@pytest.mark.parametrize("strides,dilations,pads", [((1, 1), (1, 1), (1, 1, 1, 1)), ((2, 1), (1, 2), (0, 1, 2, 0))])
def test_conv_patch_statistic_matches_torch_unfold(strides, dilations, pads):
    x = np.random.default_rng(0).normal(size=(3, 2, 7, 6))
    sums, count = conv_patch_abs_sum(x, [3, 2], list(strides), list(dilations), list(pads))
    padded = torch.nn.functional.pad(torch.tensor(x), (pads[1], pads[3], pads[0], pads[2]))
    cols = torch.nn.functional.unfold(padded, (3, 2), dilation=dilations, stride=strides)  # [N, C*3*2, L]
    assert count == cols.shape[0] * cols.shape[2]
    np.testing.assert_allclose(sums / count, cols.abs().mean(dim=(0, 2)).reshape(2, 3, 2).numpy(), rtol=1e-12)


def test_layer_inputs_of_a_cnn_match_torch():
    model = small_cnn()
    init = {t.name: torch.tensor(numpy_helper.to_array(t)) for t in model.graph.initializer}
    x = random_inputs(model, n=10)["x"]
    stats = layer_inputs(model, find_prunable_weights(model), [{"x": x[:6]}, {"x": x[6:]}])
    t = torch.tensor(x)
    r1 = torch.relu(torch.nn.functional.conv2d(t, init["conv1.weight"], init["conv1.bias"], padding=1))
    r2 = torch.relu(torch.nn.functional.conv2d(r1, init["conv2.weight"], init["conv2.bias"], padding=1))
    for name, inp, c in (("conv1.weight", t, 1), ("conv2.weight", r1, 4)):
        want = torch.nn.functional.unfold(inp, 3, padding=1).abs().mean(dim=(0, 2)).reshape(1, c, 3, 3)
        np.testing.assert_allclose(stats[name].input_abs, want.numpy(), rtol=1e-5)
        np.testing.assert_array_equal(stats[name].bias_abs, init[name.replace("weight", "bias")].abs().numpy())
    fc = stats["fc.weight"]  # Gemm transB=1: weight [out, in], inputs along axis 1
    np.testing.assert_allclose(fc.input_abs, r2.flatten(1).abs().mean(0, keepdim=True).numpy(), rtol=1e-5)
    assert fc.out_axis == 0


@pytest.mark.parametrize("build", [mlp_gemm, mlp_matmul])
def test_layer_inputs_of_mlps_and_their_biases(build):
    model = build()
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    x = random_inputs(model, n=8)["x"]
    stats = layer_inputs(model, find_prunable_weights(model), [{"x": x}])
    first = stats["fc1.weight"]
    expect = np.abs(x).mean(axis=0)
    layout = expect[None, :] if first.out_axis == 0 else expect[:, None]  # Gemm [out, in] vs MatMul [in, out]
    np.testing.assert_allclose(first.input_abs, layout, rtol=1e-6)
    np.testing.assert_array_equal(first.bias_abs, np.abs(init["fc1.bias"]))


@pytest.mark.training
def test_snip_gradients_match_torch_autograd(tmp_path):
    from onnx_flipout.passes.prunable import find_trainable_params
    from onnx_flipout.runtime.artifacts import build_artifacts
    from onnx_flipout.runtime.gradients import mean_gradients
    from onnx_flipout.runtime.losses import LossSpec
    from onnx_flipout.runtime.trainer import Trainer, TrainSettings

    model = mlp_gemm((64, 16, 10))
    x, y = load_digits()[:2]
    arts = build_artifacts(model, find_trainable_params(model), "logits", LossSpec("cross_entropy"), "sgd", tmp_path)
    trainer = Trainer(arts, TrainSettings(progress=False))
    before = trainer.parameters()
    batches = [np.arange(0, 32), np.arange(32, 50)]
    got = mean_gradients(trainer, {"x": x}, y, batches, ["fc1.weight", "fc2.weight"])
    assert all(np.array_equal(before[k], v) for k, v in trainer.parameters().items())  # no optimizer step
    w = {k: torch.tensor(v, requires_grad=True) for k, v in before.items()}
    loss = sum(torch.nn.functional.cross_entropy(
        torch.relu(torch.tensor(x[i]) @ w["fc1.weight"].T + w["fc1.bias"]) @ w["fc2.weight"].T + w["fc2.bias"],
        torch.tensor(y[i])) for i in batches) / len(batches)
    loss.backward()
    for k in got:
        np.testing.assert_allclose(got[k], w[k].grad.numpy(), atol=1e-6)
