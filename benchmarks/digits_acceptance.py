"""Issue 2's acceptance numbers on the digits MLP 64-300-100-10, measured through the `onnx-flipout` CLI.

Method: the demo's dense model (trained in onnxruntime-training, SGD momentum 0.9, lr 0.05, 40 epochs, batch 32)
is compressed by `onnx-flipout compress` with default options except --sparsity/--quantize/--seed, on the 1438-image
train split, and evaluated on the 359-image test split. Each configuration runs for every seed; the table prints
mean and min test accuracy, achieved sparsity, and the file size relative to the dense fp32 file.

usage: python benchmarks/digits_acceptance.py [--seeds 0 1 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CONFIGS = [(0.9, "int8"), (0.9, "none"), (0.99, "none"), (0.99, "int8")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=None, help="keep files here (default: a temporary folder)")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="digits-acceptance-"))
    from onnx_flipout.demo import prepare

    paths = prepare(out, progress=False)
    dense_bytes = paths["model"].stat().st_size
    print(f"dense model {paths['model']} ({dense_bytes} bytes); seeds {args.seeds}")
    print(f"{'sparsity':>8} {'quant':>5} | {'dense acc':>9} {'acc mean':>8} {'acc min':>8} | {'achieved':>8} {'size':>6}")
    for sparsity, quant in CONFIGS:
        reps = [_compress(paths, out, sparsity, quant, seed) for seed in args.seeds]
        acc = np.array([r["accuracy_after"] for r in reps])
        print(f"{sparsity:>8} {quant:>5} | {reps[0]['accuracy_before']:>9.4f} {acc.mean():>8.4f} {acc.min():>8.4f} | "
              f"{max(r['achieved_sparsity'] for r in reps):>8.4f} {reps[0]['bytes_after'] / dense_bytes:>5.3f}x")
    return 0


def _compress(paths, out: Path, sparsity: float, quant: str, seed: int) -> dict:
    model = out / f"s{sparsity}-{quant}-seed{seed}.onnx"
    report = model.with_suffix(".json")
    cmd = [sys.executable, "-m", "onnx_flipout", "compress", str(paths["model"]), "-o", str(model),
           "--data", str(paths["train"]), "--labels", "y", "--eval-data", str(paths["test"]),
           "--sparsity", str(sparsity), "--quantize", quant, "--seed", str(seed), "--report", str(report)]
    subprocess.run(cmd, check=True, capture_output=True)
    return json.loads(report.read_text())


if __name__ == "__main__":
    sys.exit(main())
