"""Run a model over a dataset and compare outputs: accuracy, and agreement with a reference model."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from onnx_flipout.data import Dataset


def predict(session: ort.InferenceSession, ds: Dataset, output: str, batch_size: int = 256) -> np.ndarray:
    return np.concatenate([session.run([output], feed)[0] for feed in ds.batches(batch_size)])


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
