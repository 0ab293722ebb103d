"""Real architectures built in code (random init, nothing downloaded), exported by both torch exporters.

Used by tests/test_coverage.py (a fast subset) and benchmarks/model_coverage.py (all of them). Not a test module.
Each entry of ARCHITECTURES is (builder, example-input maker); inputs are small so a few training steps are cheap.
The activations are chosen to exercise the repairs: LeNet uses average pooling (as the original did), the
MobileNet head uses HardSwish (as MobileNetV3 does), the 1-D net uses ELU and PReLU.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

DYNAMO_OPSET = 18  # torch.onnx.export(dynamo=True) writes opset 18 graphs by default
LEGACY_OPSET = 17  # the TorchScript exporter; 13..17 are all in use


class MLP(nn.Module):
    def __init__(self, sizes=(64, 128, 64, 10)):
        super().__init__()
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, x):
        return self.net(x)


class LeNet5BN(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.BatchNorm2d(6), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.ReLU(), nn.AvgPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                                        nn.Linear(84, classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


class ResNet18(nn.Module):
    """CIFAR-style: 3x3 stem, no max pool, four stages of two BasicBlocks."""

    def __init__(self, classes=10, width=64):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, cin = [], width
        for i, cout in enumerate([width, 2 * width, 4 * width, 8 * width]):
            stride = 1 if i == 0 else 2
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class VGG11BN(nn.Module):
    CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, classes=10):
        super().__init__()
        layers, cin = [], 3
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(512, 256), nn.ReLU(), nn.Dropout(0.5),
                                        nn.Linear(256, classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        mid = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return x + self.body(x) if self.use_res else self.body(x)


class MobileNetV2ish(nn.Module):
    """Depthwise-separable inverted residuals with ReLU6; a HardSwish head as in MobileNetV3."""

    def __init__(self, classes=10):
        super().__init__()
        cfg = [(16, 1, 1), (24, 2, 6), (24, 1, 6), (32, 2, 6), (32, 1, 6), (64, 2, 6)]
        layers, cin = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()], 16
        for cout, stride, expand in cfg:
            layers.append(InvertedResidual(cin, cout, stride, expand))
            cin = cout
        self.features = nn.Sequential(*layers, nn.Conv2d(cin, 128, 1), nn.Hardswish())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, classes))

    def forward(self, x):
        return self.head(self.features(x))


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        mid = 4 * growth
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, mid, 1, bias=False),
                                  nn.BatchNorm2d(mid), nn.ReLU(), nn.Conv2d(mid, growth, 3, 1, 1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


class DenseNetBlock(nn.Module):
    """A stem, one dense block of four BN-ReLU-Conv layers, a transition with average pooling, a classifier."""

    def __init__(self, classes=10, growth=12, layers=4):
        super().__init__()
        c = 2 * growth
        mods = [nn.Conv2d(3, c, 3, 1, 1, bias=False)]
        for _ in range(layers):
            mods.append(DenseLayer(c, growth))
            c += growth
        mods += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)]
        self.features = nn.Sequential(*mods, nn.BatchNorm2d(c // 2), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c // 2, classes))

    def forward(self, x):
        return self.head(self.features(x))


class EncoderLayer(nn.Module):
    def __init__(self, d, heads, ff):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(n, t, d))
        return x + self.ff(self.norm2(x))


class TinyTransformer(nn.Module):
    """Token and learned position embeddings, two pre-norm encoder layers (attention, LayerNorm, GELU), mean pool."""

    VOCAB, SEQ = 100, 16

    def __init__(self, classes=4, d=64, heads=4, ff=128, layers=2):
        super().__init__()
        self.embed = nn.Embedding(self.VOCAB, d)
        self.pos = nn.Parameter(torch.randn(1, self.SEQ, d) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(d, heads, ff) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, classes)

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x).mean(dim=1))


class LSTMClassifier(nn.Module):
    def __init__(self, features=8, hidden=32, classes=5):
        super().__init__()
        self.lstm, self.head = nn.LSTM(features, hidden, batch_first=True), nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class GRUClassifier(nn.Module):
    def __init__(self, features=8, hidden=32, classes=5):
        super().__init__()
        self.gru, self.head = nn.GRU(features, hidden, batch_first=True), nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1])


class Conv1DNet(nn.Module):
    def __init__(self, cin=4, classes=6):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(cin, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ELU(), nn.MaxPool1d(2),
            nn.Conv1d(16, 32, 3, padding=1), nn.BatchNorm1d(32), nn.PReLU(32), nn.MaxPool1d(2),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(32, classes))

    def forward(self, x):
        return self.head(self.features(x))


def _images(c, h):
    return lambda n, rng: {"x": rng.normal(size=(n, c, h, h)).astype(np.float32)}


ARCHITECTURES = {
    "mlp": (MLP, lambda n, rng: {"x": rng.normal(size=(n, 64)).astype(np.float32)}),
    "lenet5_bn": (LeNet5BN, _images(1, 32)),
    "resnet18": (ResNet18, _images(3, 32)),
    "vgg11_bn": (VGG11BN, _images(3, 32)),
    "mobilenetv2": (MobileNetV2ish, _images(3, 32)),
    "densenet_block": (DenseNetBlock, _images(3, 32)),
    "transformer": (TinyTransformer, lambda n, rng: {"x": rng.integers(0, TinyTransformer.VOCAB,
                                                                         (n, TinyTransformer.SEQ), dtype=np.int64)}),
    "lstm": (LSTMClassifier, lambda n, rng: {"x": rng.normal(size=(n, 12, 8)).astype(np.float32)}),
    "gru": (GRUClassifier, lambda n, rng: {"x": rng.normal(size=(n, 12, 8)).astype(np.float32)}),
    "conv1d": (Conv1DNet, lambda n, rng: {"x": rng.normal(size=(n, 4, 64)).astype(np.float32)}),
}
EXPORTERS = ("torchscript", "dynamo")


HEAD_STD = 4.0  # logits of this spread make top-1 agreement meaningful; default init leaves them nearly tied


def build(name: str, seed: int = 0) -> nn.Module:
    """The architecture with a seeded random init; BN running statistics randomised so folding is not a no-op,
    and the last Linear scaled so the logits on example inputs have standard deviation HEAD_STD."""
    torch.manual_seed(seed)
    model = ARCHITECTURES[name][0]()
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    model.eval()
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():  # logits = W h + b: scaling W and b scales the logits
        logits = model(*(torch.from_numpy(v) for v in example_inputs(name, 64, seed + 1).values()))
        factor = HEAD_STD / max(float(logits.std()), 1e-6)
        head.weight.mul_(factor)
        head.bias.mul_(factor)
    return model


def example_inputs(name: str, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    return ARCHITECTURES[name][1](n, np.random.default_rng(seed))


def export(name: str, exporter: str, path: str | Path, seed: int = 0) -> Path:
    """Export the architecture with torch.onnx.export; the batch dimension is dynamic, the output is `logits`."""
    model = build(name, seed)
    feeds = example_inputs(name, 2, seed)
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    path = Path(path)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=1024)
            torch.onnx.export(model, args, str(path), dynamo=True, opset_version=DYNAMO_OPSET, input_names=["x"],
                              output_names=["logits"], dynamic_shapes=({0: batch},), external_data=False)
        else:
            torch.onnx.export(model, args, str(path), dynamo=False, opset_version=LEGACY_OPSET, input_names=["x"],
                              output_names=["logits"], dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}})
    return path


def reference_outputs(name: str, feeds: dict[str, np.ndarray], seed: int = 0) -> np.ndarray:
    """What torch computes: the oracle for the exported graphs."""
    with torch.no_grad():
        return build(name, seed)(*(torch.from_numpy(v) for v in feeds.values())).numpy()


def load(path: str | Path) -> onnx.ModelProto:
    return onnx.load(str(path))
