"""Shared fixtures: a small digits MLP trained dense in onnxruntime-training, and its data as .npz files."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnx_flipout.demo import build_mlp, load_digits, train_dense


@pytest.fixture(scope="session")
def digits_files(tmp_path_factory):
    """A 64-64-10 digits MLP trained dense (a few seconds), with train/test .npz files; returns paths."""
    root = tmp_path_factory.mktemp("digits")
    x_tr, y_tr, x_te, y_te = load_digits()
    model = train_dense(build_mlp((64, 64, 10)), x_tr, y_tr, epochs=15, progress=False)
    paths = {"model": root / "mlp.onnx", "train": root / "train.npz", "test": root / "test.npz"}
    onnx.save(model, str(paths["model"]))
    np.savez(paths["train"], x=x_tr, y=y_tr)
    np.savez(paths["test"], x=x_te, y=y_te)
    return paths


def file_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()
