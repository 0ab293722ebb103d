"""Graph passes: pure ONNX ModelProto -> ModelProto rewrites. Nothing here imports onnxruntime."""

from .base import Pass, PassError, PassResult, Sequential
from .quantize import InsertQDQ
from .shrink import ShrinkDeadUnits
from .sparse import DensifyInitializers, SparsifyInitializers
from .weights import SetInitializers

__all__ = [
    "Pass", "PassError", "PassResult", "Sequential",
    "InsertQDQ", "ShrinkDeadUnits", "SparsifyInitializers", "DensifyInitializers", "SetInitializers",
]
