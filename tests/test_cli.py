"""The command line as a user meets it: real processes, exit codes, one-line errors, no partial output."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import file_bytes


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "onnx_flipout", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def _assert_one_line_error(proc, code, *needles):
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnx-flipout: error: "), proc.stderr
    for n in needles:
        assert n in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.training
def test_compress_through_cli_writes_model_and_report(digits_files, tmp_path):
    out, rep = tmp_path / "small.onnx", tmp_path / "r.json"
    proc = run_cli("compress", digits_files["model"], "-o", out, "--data", digits_files["train"], "--labels", "y",
                   "--eval-data", digits_files["test"], "--sparsity", "0.75", "--epochs", "3", "--report", rep)
    assert proc.returncode == 0, proc.stderr
    assert "achieved 0.7500" in proc.stdout and "accuracy" in proc.stdout
    assert out.exists() and json.loads(rep.read_text())["achieved_sparsity"] == pytest.approx(0.75, abs=1e-3)
    proc = run_cli("inspect", out)
    assert proc.returncode == 0 and "fc1.weight" in proc.stdout and "sparse" in proc.stdout
    proc = run_cli("bench", digits_files["model"], "--compare", out, "--batch", "4", "--rounds", "2")
    assert proc.returncode == 0 and str(out) in proc.stdout


def test_non_onnx_file(tmp_path, digits_files):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello, not a model")
    out = tmp_path / "o.onnx"
    proc = run_cli("compress", bad, "-o", out, "--data", digits_files["train"], "--labels", "y")
    _assert_one_line_error(proc, 3, "notes.txt")
    assert not out.exists() and bad.read_text() == "hello, not a model"


def test_data_missing_a_model_input(tmp_path, digits_files):
    data = tmp_path / "d.npz"
    np.savez(data, pixels=np.zeros((20, 64), np.float32), y=np.zeros(20, np.int64))
    before = file_bytes(digits_files["model"])
    proc = run_cli("compress", digits_files["model"], "-o", tmp_path / "o.onnx", "--data", data, "--labels", "y")
    _assert_one_line_error(proc, 4, "missing model input", "x", "pixels")
    assert not (tmp_path / "o.onnx").exists() and file_bytes(digits_files["model"]) == before


def test_sparsity_out_of_range(tmp_path, digits_files):
    proc = run_cli("compress", digits_files["model"], "-o", tmp_path / "o.onnx", "--data", digits_files["train"],
                   "--sparsity", "1.5")
    _assert_one_line_error(proc, 2, "--sparsity", "1.5")
    assert list(tmp_path.iterdir()) == []


def test_unlabelled_extra_array_suggests_labels_flag(tmp_path, digits_files):
    proc = run_cli("compress", digits_files["model"], "-o", tmp_path / "o.onnx", "--data", digits_files["train"])
    _assert_one_line_error(proc, 4, "--labels y")


def test_pickled_npz_is_refused(tmp_path, digits_files):
    data = tmp_path / "p.npz"
    np.savez(data, x=np.array([{"a": 1}], dtype=object))
    proc = run_cli("compress", digits_files["model"], "-o", tmp_path / "o.onnx", "--data", data)
    _assert_one_line_error(proc, 4, "p.npz")
