"""The model-zoo architectures onnx ships as test data (onnx/backend/test/data/light), with random weights.

The "light" files keep the original graphs (opset 9, IR 3, batch 1, initializers listed as graph inputs) but replace
every weight by ConstantOfShape(shape) with one value. Here each such node becomes a random initializer of that
shape, initialised by its role: He-normal for Conv/Gemm weights, small biases, BatchNorm/scale layers with gamma
around 1 (0.5 in residual nets, so 16 residual sums stay bounded). Everything else stays as the zoo wrote it, which is
the point: these are the old-exporter graphs the repairs must handle. Not a test module.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

LIGHT = ("resnet50", "densenet121", "inception_v1", "inception_v2", "squeezenet", "shufflenet", "vgg19",
         "bvlc_alexnet", "zfnet512")


def light_dir() -> Path:
    return Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"


def available() -> tuple[bool, str]:
    """(present, reason): the light models ship in the onnx wheel since 1.15."""
    missing = [n for n in LIGHT if not (light_dir() / f"light_{n}.onnx").is_file()]
    if missing:
        return False, f"onnx {onnx.__version__} has no light model(s) {', '.join(missing)} in {light_dir()}"
    return True, ""


def _role(model: onnx.ModelProto, name: str) -> tuple[str, int]:
    for node in model.graph.node:
        for i, x in enumerate(node.input):
            if x == name:
                return node.op_type, i
    return "", -1


def _random(shape, role, rng, gamma) -> np.ndarray:
    op, idx = role
    if (op, idx) in (("Conv", 1), ("Gemm", 1)):
        fan_in = int(np.prod(shape[1:])) if op == "Conv" else int(shape[1] if len(shape) > 1 else shape[0])
        return rng.normal(0.0, np.sqrt(2.0 / max(fan_in, 1)), shape)
    if op == "BatchNormalization":
        return {1: rng.uniform(0.8 * gamma, 1.2 * gamma, shape), 2: rng.normal(0, 0.05, shape),
                3: rng.normal(0, 0.05, shape), 4: rng.uniform(0.8, 1.2, shape)}.get(idx, rng.normal(0, 0.05, shape))
    if op == "Unsqueeze":  # Caffe2 "scale" layers: Unsqueeze(scale) -> Mul, Unsqueeze(bias) -> Add
        return rng.normal(0, 0.05, shape)
    return rng.normal(0.0, 0.05, shape)


def load_light(name: str, seed: int = 0) -> onnx.ModelProto:
    """light_<name>.onnx with every ConstantOfShape weight replaced by a seeded random initializer."""
    model = onnx.load(str(light_dir() / f"light_{name}.onnx"))
    rng = np.random.default_rng(seed)
    inits = {t.name: t for t in model.graph.initializer}
    keep_nodes, new_inits, dead = [], [], set()
    # He init keeps the scale through plain stacks; residual sums (Sum) add up, so there BN shrinks each branch
    gamma = 0.5 if any(n.op_type == "Sum" for n in model.graph.node) else 1.0
    for node in model.graph.node:
        shape = inits.get(node.input[0]) if node.op_type == "ConstantOfShape" and node.input else None
        if shape is None:
            keep_nodes.append(node)
            continue
        dims = [int(d) for d in numpy_helper.to_array(shape)]
        value = _random(dims, _role(model, node.output[0]), rng, gamma).astype(np.float32)
        if _role(model, node.output[0]) == ("Unsqueeze", 0) and _is_scale(model, node.output[0]):
            value = rng.uniform(0.8, 1.2, dims).astype(np.float32)
        new_inits.append(numpy_helper.from_array(value, node.output[0]))
        dead.add(shape.name)
    _rebuild(model, keep_nodes, new_inits, dead)
    _scale_head(model, seed)
    onnx.checker.check_model(model)
    return model


HEAD_STD = 4.0  # logits of this spread make top-1 agreement meaningful (random weights leave them nearly tied)
_HOMOGENEOUS = ("Relu", "GlobalAveragePool", "AveragePool", "Flatten", "Reshape", "Dropout", "Squeeze")


def _scale_head(model: onnx.ModelProto, seed: int) -> None:
    """Scale the last Conv/Gemm before the Softmax (through positively homogeneous ops) so logits have HEAD_STD."""
    from onnx_flipout.runtime.session import make_session

    made_by = {o: n for n in model.graph.node for o in n.output}
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    logits = softmax[-1].input[0] if softmax else model.graph.output[0].name
    layer = made_by.get(logits)
    while layer is not None and layer.op_type in _HOMOGENEOUS:
        layer = made_by.get(layer.input[0])
    if layer is None or layer.op_type not in ("Conv", "Gemm"):
        return
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, None))
    feeds = example_inputs(model, 1, seed + 1)
    factor = HEAD_STD / max(float(make_session(probe).run([logits], feeds)[0].std()), 1e-6)
    sources = {made_by[x].input[0] if x in made_by else x for x in layer.input[1:3]}  # Reshape(w) -> w
    for t in model.graph.initializer:
        if t.name in sources:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(factor), t.name))


def _is_scale(model: onnx.ModelProto, name: str) -> bool:
    """An Unsqueeze of this tensor feeds a Mul (a scale), not an Add (a shift)."""
    outs = {n.output[0] for n in model.graph.node if n.op_type == "Unsqueeze" and n.input[0] == name}
    return any(n.op_type == "Mul" and set(n.input) & outs for n in model.graph.node)


def _rebuild(model, nodes, new_inits, dead) -> None:
    """IR 3 lists every initializer as a graph input too; keep it that way (repairs must handle it)."""
    g = model.graph
    kept_inits = [t for t in g.initializer if t.name not in dead] + new_inits
    kept_inputs = [i for i in g.input if i.name not in dead]
    kept_inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in new_inits]
    for field, items in ((g.node, nodes), (g.initializer, kept_inits), (g.input, kept_inputs)):
        copies = [type(x)() for x in items]
        for c, x in zip(copies, items):
            c.CopyFrom(x)
        del field[:]
        field.extend(copies)


def example_inputs(model: onnx.ModelProto, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random images for the model's single fed input (normalised like ImageNet pixels)."""
    inits = {t.name for t in model.graph.initializer}
    (vi,) = [i for i in model.graph.input if i.name not in inits]
    dims = [d.dim_value for d in vi.type.tensor_type.shape.dim][1:]
    return {vi.name: np.random.default_rng(seed).normal(size=[n] + dims).astype(np.float32)}
