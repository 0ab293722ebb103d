"""Differential checks with onnxruntime: does a rewritten graph still compute what the original did?

The oracle is the original model in onnxruntime on random inputs (as onnx-simplifier does). Error measure per output:
max |a - b| / max(1, max |a|), i.e. absolute below an output scale of 1, relative above it; the default tolerance
is 1e-5. A model whose batch dimension was made symbolic is also run on a batch of 3 and compared sample by sample
with batches of 1, which is what tells a right batch axis from a wrong one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .session import make_session

TOLERANCE = 1e-5


@dataclass
class Verification:
    ok: bool
    max_error: float = 0.0
    outputs: dict[str, float] = field(default_factory=dict)  # per output error
    detail: str = ""

    def to_dict(self) -> dict:
        return {"ok": self.ok, "max_error": self.max_error, "outputs": self.outputs, "detail": self.detail}


def _int_bound(model: onnx.ModelProto, name: str) -> int:
    """Exclusive upper bound for random integer feeds: the smallest table a Gather indexes with them (else 2)."""
    inits = {t.name: t for t in model.graph.initializer}
    bounds = []
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name and node.input[0] in inits:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            bounds.append(inits[node.input[0]].dims[axis])
    return min(bounds) if bounds else 2


def random_feeds(model: onnx.ModelProto, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for every fed graph input: symbolic dims become `batch`, integers index their tables."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in tt.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if dtype.kind in "iu":
            feeds[vi.name] = rng.integers(0, _int_bound(model, vi.name), dims).astype(dtype)
        elif dtype.kind == "b":
            feeds[vi.name] = rng.random(dims) < 0.5
        else:
            feeds[vi.name] = rng.normal(size=dims).astype(dtype)
    return feeds


def _error(ref: np.ndarray, got: np.ndarray) -> float:
    if ref.shape != got.shape:
        return float("inf")
    if ref.size == 0:
        return 0.0
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    return float(np.abs(ref64 - got64).max() / max(1.0, float(np.abs(ref64).max())))


def compare(reference, candidate, feeds: dict[str, np.ndarray], outputs=None, tol: float = TOLERANCE) -> Verification:
    """Run both models (ModelProto or path) on feeds; compare the named outputs (default: all of the reference's)."""
    ref_s, cand_s = make_session(reference), make_session(candidate)
    names = list(outputs) if outputs is not None else [o.name for o in ref_s.get_outputs()]
    cand_names = {o.name for o in cand_s.get_outputs()}
    missing = [n for n in names if n not in cand_names]
    if missing:
        return Verification(False, float("inf"), detail=f"output(s) {', '.join(missing)} disappeared")
    ref_feeds = {i.name: feeds[i.name] for i in ref_s.get_inputs()}
    cand_feeds = {i.name: feeds[i.name] for i in cand_s.get_inputs()}
    errors = dict(zip(names, map(_error, ref_s.run(names, ref_feeds), cand_s.run(names, cand_feeds))))
    worst = max(errors.values(), default=0.0)
    detail = "" if worst <= tol else f"max error {worst:.3g} > {tol:g} in {max(errors, key=errors.get)!r}"
    return Verification(worst <= tol, worst, errors, detail)


def batch_consistency(model, feeds: dict[str, np.ndarray], tol: float = TOLERANCE) -> Verification:
    """A batch run against sample-by-sample runs: equal only if the symbolic first axis really is the batch."""
    session = make_session(model)
    names = [o.name for o in session.get_outputs()]
    whole = session.run(names, feeds)
    n = len(next(iter(feeds.values())))
    singles = [session.run(names, {k: v[i : i + 1] for k, v in feeds.items()}) for i in range(n)]
    errors = {}
    for k, name in enumerate(names):
        try:
            errors[name] = _error(whole[k], np.concatenate([s[k] for s in singles]))
        except ValueError:  # outputs without a batch axis cannot be concatenated
            errors[name] = float("inf")
    worst = max(errors.values(), default=0.0)
    detail = "" if worst <= tol else f"batch of {n} differs from {n} batches of 1 by {worst:.3g}"
    return Verification(worst <= tol, worst, errors, detail)


def _fixed_batch(model: onnx.ModelProto) -> int | None:
    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if vi.name not in inits and len(dims) and dims[0].HasField("dim_value"):
            return dims[0].dim_value
    return None


def verify_rewrite(original: onnx.ModelProto, rewritten: onnx.ModelProto, seed: int = 0,
                   tol: float = TOLERANCE) -> Verification:
    """The rewritten model computes the original's outputs on random inputs (the original's batch size, else 2);
    if the rewrite made a fixed batch symbolic, batches of 3 must also agree with batches of 1."""
    try:
        fixed = _fixed_batch(original)
        result = compare(original, rewritten, random_feeds(original, fixed or 2, seed), tol=tol)
        if result.ok and fixed is not None and _fixed_batch(rewritten) is None:
            many = batch_consistency(rewritten, random_feeds(rewritten, 3, seed + 1), tol)
            if not many.ok:
                return many
        return result
    except Exception as exc:  # a rewrite that onnxruntime refuses to load or run is a failed rewrite
        return Verification(False, float("inf"), detail=f"onnxruntime: {str(exc).splitlines()[0][:200]}")
