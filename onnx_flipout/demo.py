"""`onnx-flipout demo`: the whole product on a bundled default, with nothing downloaded.

Data: the UCI optical digits (1797 8x8 images), as bundled with scikit-learn (BSD-3), shipped in assets/digits.npz.
Model: an MLP 64-300-100-10 written as ONNX here and trained dense with onnxruntime-training (no torch in the path),
then compressed with FlipOut to 90 % sparsity and int8.
"""

from __future__ import annotations

import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .model_io import save_model_atomic

LAYERS = (64, 300, 100, 10)
CNN_CHANNELS = (1, 16, 32)


def load_digits(seed: int = 0, test_fraction: float = 0.2):
    """(x_train, y_train, x_test, y_test): pixels scaled to [0, 1], a seeded stratification-free split."""
    with resources.files("onnx_flipout").joinpath("assets/digits.npz").open("rb") as f, np.load(f) as npz:
        x = npz["images"].astype(np.float32) / 16.0
        y = npz["labels"].astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def build_mlp(layers=LAYERS, seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    """Gemm(transB=1) + Relu layers with torch.nn.Linear's default uniform init; input 'x', output 'logits'."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, (fan_in, fan_out) in enumerate(zip(layers[:-1], layers[1:]), start=1):
        bound = 1.0 / np.sqrt(fan_in)
        w = rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32)
        b = rng.uniform(-bound, bound, (fan_out,)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"fc{i}.weight"), numpy_helper.from_array(b, f"fc{i}.bias")]
        last = i == len(layers) - 1
        out = "logits" if last else f"fc{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"fc{i}.weight", f"fc{i}.bias"], [out], name=f"fc{i}", transB=1))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"], name=f"relu{i}"))
            prev = f"relu{i}"
    graph = helper.make_graph(
        nodes, "digits_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", layers[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", layers[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def build_cnn(channels=CNN_CHANNELS, image: int = 8, classes: int = 10, seed: int = 0,
              opset: int = 17) -> onnx.ModelProto:
    """Digits CNN on [N, 1, 8, 8]: Conv 3x3 (pad 1) + Relu per entry of `channels`, MaxPool 2x2, Flatten, Gemm.

    Defaults: conv16, conv32, fc (512 -> 10). torch's default uniform init (bound 1/sqrt(fan_in)); 'x' -> 'logits'."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"

    def param(name, shape, fan_in):
        bound = 1.0 / np.sqrt(fan_in)
        inits.append(numpy_helper.from_array(rng.uniform(-bound, bound, shape).astype(np.float32), name))
        return name

    for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:]), start=1):
        w, b = param(f"conv{i}.weight", (cout, cin, 3, 3), cin * 9), param(f"conv{i}.bias", (cout,), cin * 9)
        nodes.append(helper.make_node("Conv", [prev, w, b], [f"conv{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"))
        prev = f"relu{i}"
    nodes.append(helper.make_node("MaxPool", [prev], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1))
    fan_in = channels[-1] * (image // 2) ** 2
    w, b = param("fc.weight", (classes, fan_in), fan_in), param("fc.bias", (classes,), fan_in)
    nodes.append(helper.make_node("Gemm", ["flat", w, b], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes, "digits_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", channels[0], image, image])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def train_dense(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray, epochs: int = 40, lr: float = 0.05,
                seed: int = 0, progress: bool = True) -> onnx.ModelProto:
    """Train all weights and biases with cross-entropy, SGD momentum 0.9, batch 32, in onnxruntime-training."""
    from .passes.prunable import find_trainable_params
    from .passes.weights import SetInitializers
    from .runtime.artifacts import build_artifacts
    from .runtime.losses import LossSpec
    from .runtime.trainer import Trainer, TrainSettings

    with tempfile.TemporaryDirectory(prefix="onnx-flipout-dense-") as tmp:
        arts = build_artifacts(model, find_trainable_params(model), "logits", LossSpec("cross_entropy"), "sgd", Path(tmp))
        trainer = Trainer(arts, TrainSettings(epochs=epochs, lr=lr, seed=seed, progress=progress))
        trainer.fit({"x": x}, y)
        return SetInitializers(trainer.parameters())(model).model


def prepare(out_dir: Path, progress: bool = True) -> dict[str, Path]:
    """Write the dense digits model and its train/test data into out_dir (reused if already there)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"model": out_dir / "digits_mlp.onnx", "train": out_dir / "digits_train.npz",
             "test": out_dir / "digits_test.npz"}
    x_tr, y_tr, x_te, y_te = load_digits()
    if not paths["model"].exists():
        save_model_atomic(train_dense(build_mlp(), x_tr, y_tr, progress=progress), paths["model"])
    np.savez(paths["train"], x=x_tr, y=y_tr)
    np.savez(paths["test"], x=x_te, y=y_te)
    return paths


def run(out_dir: str = "flipout-demo", sparsity: float = 0.9, quantize: str = "int8", progress: bool = True):
    from .api import compress

    out = Path(out_dir)
    paths = prepare(out, progress=progress)
    compressed = out / f"digits_mlp.s{sparsity:g}.{quantize}.onnx"
    report = compress(
        paths["model"], compressed, data=paths["train"], labels="y", eval_data=paths["test"],
        report=out / "report.json", sparsity=sparsity, quantize=quantize, progress=progress,
    )
    return report, paths, compressed
