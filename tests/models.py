"""Tiny models built in code for the tests: IR <= 10, opset <= 21, random weights, nothing downloaded."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


def _finish(nodes, inputs, outputs, inits, name) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def _linear(rng, fan_in, fan_out, name):
    bound = 1.0 / np.sqrt(fan_in)
    w = rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32)
    b = rng.uniform(-bound, bound, (fan_out,)).astype(np.float32)
    return numpy_helper.from_array(w, f"{name}.weight"), numpy_helper.from_array(b, f"{name}.bias")


def mlp_gemm(sizes=(64, 32, 16, 10), seed=0) -> onnx.ModelProto:
    """Linear layers as Gemm(transB=1) + Relu, the way torch.onnx.export writes nn.Linear."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w, bias = _linear(rng, a, b, f"fc{i + 1}")
        inits += [w, bias]
        out = "logits" if i == len(sizes) - 2 else f"h{i + 1}"
        nodes.append(helper.make_node("Gemm", [prev, w.name, bias.name], [out], name=f"fc{i + 1}", transB=1))
        if out != "logits":
            nodes.append(helper.make_node("Relu", [out], [f"a{i + 1}"], name=f"relu{i + 1}"))
            prev = f"a{i + 1}"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", sizes[-1]])
    return _finish(nodes, [x], [y], inits, "mlp_gemm")


def mlp_matmul(sizes=(64, 32, 10), seed=0) -> onnx.ModelProto:
    """Linear layers as MatMul (weight [in, out]) + Add bias, the other common export form."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w, bias = _linear(rng, a, b, f"fc{i + 1}")
        w = numpy_helper.from_array(numpy_helper.to_array(w).T.copy(), w.name)
        inits += [w, bias]
        last = i == len(sizes) - 2
        nodes.append(helper.make_node("MatMul", [prev, w.name], [f"mm{i + 1}"], name=f"mm{i + 1}"))
        out = "logits" if last else f"h{i + 1}"
        nodes.append(helper.make_node("Add", [f"mm{i + 1}", bias.name], [out], name=f"add{i + 1}"))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"a{i + 1}"], name=f"relu{i + 1}"))
            prev = f"a{i + 1}"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", sizes[-1]])
    return _finish(nodes, [x], [y], inits, "mlp_matmul")


def small_cnn(channels=(1, 4, 8), image=8, classes=10, seed=0) -> onnx.ModelProto:
    """Conv(3x3, pad 1) + Relu blocks, Flatten, Gemm: a digits-sized CNN on [N, 1, 8, 8]."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
        bound = 1.0 / np.sqrt(cin * 9)
        w = numpy_helper.from_array(rng.uniform(-bound, bound, (cout, cin, 3, 3)).astype(np.float32), f"conv{i + 1}.weight")
        b = numpy_helper.from_array(rng.uniform(-bound, bound, (cout,)).astype(np.float32), f"conv{i + 1}.bias")
        inits += [w, b]
        nodes.append(helper.make_node("Conv", [prev, w.name, b.name], [f"c{i + 1}"], name=f"conv{i + 1}", pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i + 1}"], [f"r{i + 1}"], name=f"relu{i + 1}"))
        prev = f"r{i + 1}"
    nodes.append(helper.make_node("Flatten", [prev], ["flat"], name="flatten", axis=1))
    w, b = _linear(rng, channels[-1] * image * image, classes, "fc")
    inits += [w, b]
    nodes.append(helper.make_node("Gemm", ["flat", w.name, b.name], ["logits"], name="fc", transB=1))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels[0], image, image])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])
    return _finish(nodes, [x], [y], inits, "small_cnn")


def random_inputs(model: onnx.ModelProto, n: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float feeds for every model input, with symbolic dims set to n."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else n for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.normal(size=dims).astype(np.float32)
    return feeds
