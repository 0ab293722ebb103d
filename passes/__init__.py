"""Graph passes: pure ONNX ModelProto -> ModelProto rewrites. Nothing here imports onnxruntime."""

from .base import Pass, PassError, PassResult, Sequential

__all__ = ["Pass", "PassError", "PassResult", "Sequential"]
