"""Graph passes: pure ONNX ModelProto -> ModelProto rewrites. Nothing here imports onnxruntime."""

from .base import Pass, PassError, PassResult, Sequential
from .quantize import InsertQDQ
from .sparse import DensifyInitializers, SparsifyInitializers
from .weights import SetInitializers

__all__ = [
    "Pass", "PassError", "PassResult", "Sequential",
    "InsertQDQ", "SparsifyInitializers", "DensifyInitializers", "SetInitializers",
]
