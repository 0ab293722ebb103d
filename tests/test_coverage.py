"""The fast subset of benchmarks/model_coverage.py: real exporter graphs compressed end to end, each in its own process.

Each case exercises different repairs: LeNet (dynamo: AveragePool, whose gradient kills the process unrepaired),
the transformer (TorchScript: LayerNorm outputs/bias, Identity-tied norms), the 1-D net (dynamo: ELU, PReLU),
the GRU (TorchScript: unrolled), SqueezeNet (model zoo: opset 9, IR 3 initializer inputs, batch 1, Dropout).
The full set with its table: python benchmarks/model_coverage.py
"""

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
_spec = importlib.util.spec_from_file_location("coverage_bench", ROOT / "benchmarks" / "model_coverage.py")
coverage = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = coverage  # dataclasses look their module up while the module runs
_spec.loader.exec_module(coverage)

import zoo_light  # noqa: E402

pytestmark = pytest.mark.training

DEPLOY = coverage.DEPLOY_PYTHON if Path(coverage.DEPLOY_PYTHON).exists() else None
CASES = ["lenet5_bn/dynamo", "transformer/torchscript", "conv1d/dynamo", "gru/torchscript", "squeezenet/zoo"]


@pytest.mark.parametrize("case", CASES)
def test_compresses_end_to_end(case):
    if case.endswith("/zoo") and not zoo_light.available()[0]:
        pytest.skip(zoo_light.available()[1])
    if case.split("/")[1] == "dynamo" and importlib.util.find_spec("onnxscript") is None:
        pytest.skip("torch.onnx.export(dynamo=True) needs onnxscript (the test extra)")
    # the deploy check wants an environment with only the newest onnxruntime; without one, this environment's
    # onnxruntime stands in (the CI deploy step covers the real one)
    row = coverage.run_isolated(case, DEPLOY or sys.executable, timeout=300)
    assert row.end_to_end, f"{case}: {row.miss}"
    assert not row.miss and row.repairs > 0 and abs(row.sparsity - coverage.TARGET) <= 0.002
    assert row.cosine > 0.5  # the compressed model still tracks the original


def test_a_crash_in_a_case_is_a_miss_not_the_end(tmp_path, monkeypatch):
    """A case whose process dies by a signal comes back as a row naming the signal and the stage."""
    script = tmp_path / "die.py"
    script.write_text("import os, signal, sys, pathlib\n"
                      "args = sys.argv\nwork = pathlib.Path(args[args.index('--work') + 1])\n"
                      "(work / 'stage').write_text('compress')\nos.kill(os.getpid(), signal.SIGFPE)\n")
    monkeypatch.setattr(coverage, "__file__", str(script))
    row = coverage.run_isolated("mlp/torchscript", shutil.which("true") or "true", timeout=60)
    assert not row.end_to_end and row.miss == "compress: process killed by SIGFPE"
