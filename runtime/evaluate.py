"""Run a model over a dataset and compare outputs: accuracy, and agreement with a reference model."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from onnx_flipout.data import Dataset


def predict(session: ort.InferenceSession, ds: Dataset, output: str, batch_size: int = 256) -> np.ndarray:
    return predict_outputs(session, ds, [output], batch_size)[output]


def predict_outputs(session: ort.InferenceSession, ds: Dataset, outputs: list[str],
                    batch_size: int = 256) -> dict[str, np.ndarray]:
    """The named outputs over the whole dataset, in batches (of the model's own size when its batch is fixed)."""
    runs = [session.run(outputs, feed) for feed in ds.batches(fixed_batch(session) or batch_size)]
    return {name: np.concatenate([r[i] for r in runs]) for i, name in enumerate(outputs)}


def fixed_batch(session: ort.InferenceSession) -> int | None:
    """The batch size a model insists on (model-zoo files declare [1, 3, 224, 224]); None when it is free."""
    firsts = {i.shape[0] if i.shape else None for i in session.get_inputs()}
    first = firsts.pop() if len(firsts) == 1 else None
    return first if isinstance(first, int) and first > 0 else None


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.reshape(len(labels), -1).argmax(axis=1) == labels).mean())


def agreement(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Top-1 agreement (class outputs), max absolute difference, and cosine similarity of the flattened outputs."""
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    cand = candidate.reshape(len(candidate), -1).astype(np.float64)
    cos = float(ref.ravel() @ cand.ravel() / max(np.linalg.norm(ref) * np.linalg.norm(cand), 1e-30))
    return {
        "top1_agreement": float((ref.argmax(axis=1) == cand.argmax(axis=1)).mean()),
        "max_abs_diff": float(np.abs(ref - cand).max()),
        "cosine": cos,
    }
