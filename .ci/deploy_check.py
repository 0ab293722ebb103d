"""Run compressed models the way a deploying user does: plain onnxruntime (newest) and numpy, nothing else.

usage: deploy_check.py MODEL DATA.npz REFERENCE.npz OPTIMIZED_OUT
Loads MODEL, runs it on DATA's inputs, compares with REFERENCE (outputs computed by the training build), and writes
onnxruntime's optimized graph to OPTIMIZED_OUT so the caller can check that int8 kernels were fused.
"""

import sys

import numpy as np
import onnxruntime as ort


def main(model, data, reference, optimized_out) -> int:
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = optimized_out
    session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    with np.load(data, allow_pickle=False) as d, np.load(reference, allow_pickle=False) as r:
        feeds = {i.name: d[i.name] for i in session.get_inputs()}
        got = session.run(None, feeds)[0]
        want = r["logits"]
    top1 = float((got.argmax(1) == want.argmax(1)).mean())
    scale = float(np.abs(want).max())
    err = float(np.abs(got - want).max())
    checks = {
        f"loads and runs on onnxruntime {ort.__version__}": got.shape == want.shape,
        f"top-1 agreement with the training build {top1:.4f} >= 0.99": top1 >= 0.99,
        f"max |diff| {err:.4g} <= 5% of max |output| {scale:.4g}": err <= 0.05 * scale,
    }
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    failed = sum(not ok for ok in checks.values())
    print(f"deploy check: {len(checks) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
