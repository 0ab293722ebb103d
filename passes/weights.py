"""Write tensors back into initializers (trained, masked weights) without touching anything else."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .base import Pass, PassResult


class SetInitializers(Pass):
    """Replace the values of named initializers; shapes and dtypes must match the originals."""

    def __init__(self, values: dict[str, np.ndarray]):
        self.values = values

    def call(self, model: onnx.ModelProto) -> PassResult:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        found = set()
        for i, tensor in enumerate(out.graph.initializer):
            if tensor.name not in self.values:
                continue
            old = numpy_helper.to_array(tensor)
            new = np.asarray(self.values[tensor.name])
            if new.shape != old.shape:
                raise ValueError(f"initializer {tensor.name!r}: new shape {new.shape} != {old.shape}")
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(new.astype(old.dtype), tensor.name))
            found.add(tensor.name)
        missing = set(self.values) - found
        if missing:
            raise ValueError(f"no initializer named {', '.join(sorted(missing))}")
        return PassResult(out, bool(found))
