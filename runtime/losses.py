"""Losses for fine-tuning, as onnxruntime-training onnxblock blocks.

Without labels the model is distilled from its own original outputs. Plain MSE on logits is a poor default: its
gradient grows with the logits' scale (digits logits differ by up to 35), which diverges at learning rates where
cross-entropy is fine. So:
- logits [N, C]: soft-target cross-entropy  L = -(1/N) sum_n sum_c p_c(teacher) * log_softmax(student)_c,
  whose gradient (softmax(student) - p_teacher) / N is bounded exactly like cross-entropy's (Hinton et al. 2015, T=1).
- any other output: MSE after dividing student and teacher by the teacher's standard deviation, so the loss and its
  gradients are scale-free: L = mean((student * c - teacher * c)^2), c = 1 / std(teacher).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnxruntime.training import onnxblock
from onnxruntime.training.onnxblock import blocks


@dataclass(frozen=True)
class LossSpec:
    kind: str  # "cross_entropy" (integer labels), "soft_cross_entropy" (teacher probabilities), "mse"
    num_classes: int = 0  # soft_cross_entropy
    scale: float = 1.0  # mse: c

    def block(self):
        if self.kind == "cross_entropy":
            return onnxblock.loss.CrossEntropyLoss()
        if self.kind == "soft_cross_entropy":
            return SoftTargetCrossEntropy(self.num_classes)
        return ScaledMSE(self.scale)

    def targets(self, teacher_outputs: np.ndarray) -> np.ndarray:
        """What to feed as the target for the given teacher outputs."""
        if self.kind == "soft_cross_entropy":
            z = teacher_outputs - teacher_outputs.max(axis=-1, keepdims=True)
            e = np.exp(z)
            return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
        return (teacher_outputs * self.scale).astype(np.float32)


def distillation_loss(teacher_outputs: np.ndarray, mode: str = "auto") -> LossSpec:
    """Pick the distillation loss: logits ([N, C], C >= 2) get soft cross-entropy unless mode says otherwise."""
    is_logits = teacher_outputs.ndim == 2 and teacher_outputs.shape[1] >= 2
    if mode == "logits" or (mode == "auto" and is_logits):
        if not is_logits:
            raise ValueError(f"--distill logits needs a [N, C] output, got shape {teacher_outputs.shape}")
        return LossSpec("soft_cross_entropy", num_classes=int(teacher_outputs.shape[1]))
    std = float(teacher_outputs.std())
    return LossSpec("mse", scale=1.0 / std if std > 0 else 1.0)


class _Op(blocks.Block):
    """One ONNX node appended to the training graph (onnxblock has no LogSoftmax block)."""

    def __init__(self, op_type: str, **attrs):
        super().__init__()
        self.op_type, self.attrs = op_type, attrs

    def build(self, *inputs):
        out = onnxblock._graph_utils.generate_graph_name(f"{self.op_type.lower()}_output")
        node = onnx.helper.make_node(self.op_type, list(inputs), [out],
                                     onnxblock._graph_utils.generate_graph_name(self.op_type), **self.attrs)
        self.base.graph.node.append(node)
        return out


class SoftTargetCrossEntropy(blocks.Block):
    def __init__(self, num_classes: int):
        super().__init__()
        self._log_softmax = _Op("LogSoftmax", axis=-1)
        self._mul, self._scale = blocks.Mul(), blocks.Mul()
        self._mean = blocks.ReduceMean(keepdims=False)
        # mean over all N*C entries times -C = -(1/N) * sum over classes and samples
        self._neg_c = blocks.Constant(-float(num_classes))

    def build(self, loss_input_name: str, target_name: str = "target"):
        target = blocks.InputLike(loss_input_name)(target_name)
        per_entry = self._mul(target, self._log_softmax(loss_input_name))
        return self._scale(self._mean(per_entry), self._neg_c())


class ScaledMSE(blocks.Block):
    def __init__(self, scale: float):
        super().__init__()
        self._c = blocks.Constant(float(scale))
        self._mul, self._sub = blocks.Mul(), blocks.Sub()
        self._square, self._mean = blocks.Pow(2.0), blocks.ReduceMean(keepdims=False)

    def build(self, loss_input_name: str, target_name: str = "target"):
        target = blocks.InputLike(loss_input_name)(target_name)
        scaled = self._mul(loss_input_name, self._c())
        return self._mean(self._square(self._sub(scaled, target)))
