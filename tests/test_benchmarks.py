"""The hook-cost benchmark runs end to end (a few real steps per variant) and prints every row and its verdict
line: it backs a README table, so it must not rot. No timing is asserted."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.training
def test_flip_hook_cost_benchmark_runs_and_reports_every_variant():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "flip_hook_cost.py"), "--steps", "4",
                          "--rounds", "1", "--profile"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for row in ("a  no hook", "a0 no hook, numpy momentum", "b  flip counting", "b0 flip counting, numpy 3 passes",
                "c  Pruner", "d  Pruner + noise", "pruning events", "flip counting in-step:",
                "FlipCounter.update(keep=masks), one fused pass"):
        assert row in out.stdout, row
