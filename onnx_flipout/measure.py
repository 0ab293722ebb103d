"""The verify stage of `compress`: the written model against the original on held-out data, and both timed."""

from __future__ import annotations

from .data import Dataset
from .report import Report


def measure(rep: Report, before, after, eval_ds: Dataset, output_name: str) -> None:
    """Accuracy (with labels), agreement on the trained output and on every other output both models have (those
    are kept and must still agree), and latency at batch 1 and 32, or at the original's fixed batch size."""
    from .runtime.bench import compare_latency
    from .runtime.evaluate import accuracy, agreement, fixed_batch, predict_outputs

    names = [o.name for o in before.get_outputs()]
    shared = [n for n in names if n in {o.name for o in after.get_outputs()}]
    ref, out = predict_outputs(before, eval_ds, shared), predict_outputs(after, eval_ds, shared)
    if eval_ds.labels is not None:
        rep.accuracy_before = accuracy(ref[output_name], eval_ds.labels)
        rep.accuracy_after = accuracy(out[output_name], eval_ds.labels)
    rep.agreement = agreement(ref[output_name], out[output_name])
    rep.other_outputs = {n: agreement(ref[n], out[n]) for n in shared if n != output_name}
    fixed = fixed_batch(before)
    for batch in [fixed] if fixed else sorted({1, min(32, len(eval_ds))}):
        feeds = next(eval_ds.batches(batch))
        t = compare_latency({"original": before, "compressed": after}, feeds)
        rep.latency_ms[f"batch {batch}"] = {k: v * 1e3 for k, v in t.items()}
