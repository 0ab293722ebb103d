"""Trainability pre-flight: which nodes would stop onnxruntime-training 1.19.2 from building or running the gradient.

onnxruntime's gradient builder walks back from the loss and asks every node that lies on a path from a parameter
that requires a gradient to the loss for its gradient; one node without a builder fails the whole artifact build.
Nodes reached only from the model's inputs, or only through integer/bool tensors (shapes, indices, masks), are
never asked. So a node is a blocker when
  (a float input of it is computed from a trainable initializer) and (a float output of it reaches the loss output)
and its op is in no table of working gradients below, or it is one of the known traps (an op whose gradient builder
needs outputs the exporter left out, an op that crashes the process). Pure onnx: nothing here imports onnxruntime.

The tables were measured on onnxruntime-training-cpu 1.19.2 (generate_artifacts and one training step of a
MatMul weight followed by the op; tests/test_preflight.py keeps a few of them honest) and cross-checked with its
gradient_builder_registry.cc.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import onnx

from .graph import attr, initializers, opset_version
from .prunable import find_trainable_params

# Ops whose gradient builds and runs on the CPU in 1.19.2.
GRADIENT_OPS = frozenset({
    "Abs", "Add", "BatchNormalization", "Cast", "Clip", "Concat", "Conv", "Div", "Dropout", "Erf", "Exp",
    "Expand", "Flatten", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm", "GlobalAveragePool", "Identity",
    "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax", "MatMul", "Max", "MaxPool", "Min", "Mul", "Neg", "Pad",
    "Pow", "Reciprocal", "ReduceL2", "ReduceLogSumExp", "ReduceMean", "ReduceSum", "Relu", "Reshape",
    "ScatterElements", "ScatterND", "Sigmoid", "Sin", "Slice", "Softmax", "Split", "Sqrt", "Squeeze", "Sub", "Tanh",
    "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Where",
})

# Ops known to fail, with the reason (measured). Anything in neither table is reported as unknown.
NO_GRADIENT = {
    **dict.fromkeys(
        ("Elu", "Selu", "Celu", "Softplus", "Softsign", "Mish", "HardSwish", "HardSigmoid", "ThresholdedRelu",
         "PRelu", "CumSum", "Einsum", "DepthToSpace", "SpaceToDepth", "ReduceMax", "ReduceMin", "ReduceProd",
         "ReduceSumSquare", "InstanceNormalization", "GroupNormalization", "LRN", "CastLike", "Sum", "Mean",
         "RNN", "Upsample", "Round", "Floor", "Ceil", "Sign"),
        "no gradient builder in onnxruntime-training 1.19.2",
    ),
    "ConvTranspose": "no CPU gradient kernel in onnxruntime-training 1.19.2",
    "Resize": "no CPU gradient kernel in onnxruntime-training 1.19.2",
    "LSTM": "gradient needs com.microsoft LSTMTraining's extra outputs; the ONNX LSTM fails to build",
    "GRU": "gradient needs com.microsoft GRUTraining's extra outputs; the ONNX GRU fails to build",
    "AveragePool": "kills the process with SIGFPE on the first training step (onnxruntime-training 1.19.2)",
}

# Ops that never carry a gradient: their outputs are shapes, indices, masks or fresh constants.
NON_DIFFERENTIABLE = frozenset({
    "Shape", "Size", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "And", "Or", "Not", "Xor",
    "ArgMax", "ArgMin", "NonZero", "IsNaN", "IsInf", "Constant", "ConstantOfShape", "EyeLike", "Range",
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
})

_MIN_TRAINING_OPSET = 11  # below, MatMul's gradient emits a two-input Gemm that the graph checker refuses
_FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


@dataclass(frozen=True)
class Blocker:
    """A node on a gradient path that onnxruntime-training 1.19.2 cannot differentiate."""

    node: str  # node name (or its first output when unnamed)
    op_type: str
    reason: str
    params: tuple[str, ...] = ()  # trainable initializers whose gradient must pass through this node

    def __str__(self) -> str:
        return f"{self.op_type} {self.node!r}: {self.reason}"


@dataclass
class Preflight:
    output: str
    trainable: list[str]
    blockers: list[Blocker] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)  # trainable tensors that do not influence the output

    @property
    def ok(self) -> bool:
        return not self.blockers

    def blocked_params(self) -> list[str]:
        return sorted({p for b in self.blockers for p in b.params})


def structural_problem(node: onnx.NodeProto, model: onnx.ModelProto) -> str | None:
    """Why an op with a gradient builder would still fail as written (None when it is fine)."""
    op = node.op_type
    if op == "LayerNormalization" and (len(node.output) < 3 or len(node.input) < 3 or not node.input[2]):
        return "gradient builder needs the Mean/InvStdDev outputs and a bias input"
    if op == "Dropout" and dropout_trains(node, model) and (len(node.output) < 2 or not node.output[1]):
        return "training-mode Dropout needs its mask output"
    if op == "Pad" and attr(node, "mode", b"constant") not in (b"constant", "constant"):
        return f"Pad in {attr(node, 'mode').decode()} mode has no gradient"
    return None


def dropout_trains(node: onnx.NodeProto, model: onnx.ModelProto) -> bool:
    if len(node.input) < 3 or not node.input[2]:
        return False
    t = initializers(model).get(node.input[2])
    if t is None:
        return True  # fed at run time or computed: assume it may train
    return bool(onnx.numpy_helper.to_array(t).item())


def node_problem(node: onnx.NodeProto, model: onnx.ModelProto) -> str | None:
    if node.domain not in ("", "ai.onnx"):
        return f"custom-domain op {node.domain}.{node.op_type}: gradient support unknown"
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        return "control flow (subgraph): onnxruntime-training 1.19.2 cannot differentiate through it"
    if node.op_type in NO_GRADIENT:
        return NO_GRADIENT[node.op_type]
    if node.op_type not in GRADIENT_OPS:
        return "not known to have a gradient in onnxruntime-training 1.19.2"
    return structural_problem(node, model)


def _float_tensors(model: onnx.ModelProto) -> dict[str, bool]:
    """tensor name -> is it floating point (names missing from the map have an unknown type)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # an unusual graph: fall back to what the model itself declares
        inferred = model
    g = inferred.graph
    kinds = {t.name: t.data_type in _FLOAT for t in g.initializer}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            kinds[vi.name] = vi.type.tensor_type.elem_type in _FLOAT
    return kinds


def _name(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def run_preflight(model: onnx.ModelProto, output: str, trainable: list[str] | None = None) -> Preflight:
    """Find every node on a path from a trainable initializer to `output` whose gradient would fail."""
    trainable = list(find_trainable_params(model) if trainable is None else trainable)
    is_float = _float_tensors(model)
    carries = lambda name: bool(name) and is_float.get(name, True)  # noqa: E731 - unknown types may carry
    reached: dict[str, set[str]] = defaultdict(set)  # tensor -> trainable params it is computed from
    for p in trainable:
        reached[p].add(p)
    for node in model.graph.node:  # nodes are in topological order
        if node.op_type in NON_DIFFERENTIABLE:
            continue
        params = set().union(*(reached[i] for i in node.input if carries(i) and i in reached))
        if params:
            for out in node.output:
                if carries(out):
                    reached[out] |= params
    to_loss = reaches(model, output)
    result = Preflight(output, trainable)
    result.unreachable = [p for p in trainable if p not in to_loss]
    for node in model.graph.node:
        if node.op_type in NON_DIFFERENTIABLE or not any(o in to_loss for o in node.output if carries(o)):
            continue
        params = set().union(*(reached[i] for i in node.input if carries(i) and i in reached))
        problem = node_problem(node, model) if params else None
        if problem:
            result.blockers.append(Blocker(_name(node), node.op_type, problem, tuple(sorted(params))))
    version = opset_version(model) or 0
    if result.trainable and version < _MIN_TRAINING_OPSET:
        result.blockers.append(Blocker("<model>", "opset", f"ai.onnx opset {version} < {_MIN_TRAINING_OPSET}: "
                                       "gradient graphs need opset >= 11", tuple(result.trainable)))
    return result


def reaches(model: onnx.ModelProto, output: str) -> set[str]:
    """Every tensor from which `output` can be computed (through any input slot)."""
    needed = {output}
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            needed.update(i for i in node.input if i)
    return needed
