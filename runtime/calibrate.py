"""MinMax calibration: the running min and max of chosen tensors over calibration batches.

Same method as onnxruntime.quantization's default (CalibrationMethod.MinMax): the tensors become extra graph
outputs of a copy of the model, and every batch updates a running (min, max).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx

from onnx_flipout.errors import DataError

from .session import make_session


def collect_ranges(
    model: onnx.ModelProto,
    batches: Iterable[dict[str, np.ndarray]],
    tensors: list[str],
    provider: str = "cpu",
) -> dict[str, tuple[float, float]]:
    """{tensor: (min, max)} over all batches. The input model is not modified."""
    session = make_session(_with_outputs(model, tensors), provider=provider)
    needed = [i.name for i in session.get_inputs()]
    lo = dict.fromkeys(tensors, np.inf)
    hi = dict.fromkeys(tensors, -np.inf)
    seen = 0
    for batch in batches:
        missing = [n for n in needed if n not in batch]
        if missing:
            raise DataError(f"calibration batch {seen} lacks model input(s) {', '.join(map(repr, missing))}")
        for name, value in zip(tensors, session.run(tensors, {n: batch[n] for n in needed})):
            if value.size:  # an empty batch says nothing about the range
                lo[name] = min(lo[name], float(value.min()))
                hi[name] = max(hi[name], float(value.max()))
        seen += 1
    if not seen:
        raise DataError("no calibration batches: static quantization needs at least one batch of representative inputs")
    unseen = [t for t in tensors if lo[t] > hi[t]]
    if unseen:
        raise DataError(f"calibration batches produced no values for tensor(s) {', '.join(map(repr, unseen))}")
    return {t: (lo[t], hi[t]) for t in tensors}


def _with_outputs(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of model that also returns `tensors` (all float activations, so FLOAT with unknown shape)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    copy.graph.output.extend(
        onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors if t not in present
    )
    return copy
