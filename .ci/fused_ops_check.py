"""Check an onnxruntime-optimized graph: int8 kernels fused, no DequantizeLinear left on a weight path.

usage: fused_ops_check.py OPTIMIZED.onnx   (run with the onnx package, i.e. in the test environment)
"""

import sys

import onnx


def main(path) -> int:
    g = onnx.load(path).graph
    inits = {t.name for t in g.initializer} | {t.values.name for t in g.sparse_initializer}
    weight_dq = [n.name or n.output[0] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    fused = sorted({n.op_type for n in g.node} & {"QGemm", "QLinearMatMul", "QLinearConv", "MatMulInteger"})
    print(f"  ops after onnxruntime's optimizer: {', '.join(n.op_type for n in g.node)}")
    ok = not weight_dq and bool(fused)
    print(f"fused-ops check: {int(ok)} passed, {int(not ok)} failed"
          + ("" if ok else f" (weight DequantizeLinear: {weight_dq}, fused: {fused})"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
