"""Coverage: real architectures, from both torch exporters and the onnx model zoo, compressed end to end.

For each model x exporter: export (or load the zoo file with random weights) -> onnx_flipout.compress on the file as
exported (its repair stage: pre-flight, repairs checked with onnxruntime, fallback freezing; then the guarded
artifact build and first step in a child process, fine-tuning at sparsity 0.5, int8; MSE distillation on random
inputs made in code, AdamW 3e-4, 12 steps; zoo models at 224x224: 10 steps) -> the output run on the newest
onnxruntime in a separate environment holding only onnxruntime and numpy. Every case runs in its own process: a
crash is a miss with its signal, never the end of the run.

Columns: repairs (frozen weights) from the report, fine-tuned (training steps ran, finite losses), sparsity (1 -
nonzeros in the written file / prunable weights after repair, frozen ones included; "ok" within 0.2 points of the
target), int8 fused (the newest
onnxruntime's optimized graph has QLinearConv/QGemm/QLinearMatMul and no DequantizeLinear left on a weight),
deploy (loads and runs there), agreement with the original model (top-1 and cosine on held-out random inputs).
End to end = the first four. Agreement is reported, not required: these networks have random weights, and halving
a random network's weights (no redundancy to remove) with a few steps of distillation on noise says more about the
weights than about the pipeline; --control runs each case again at sparsity 0 (repairs, fine-tuning, int8 only).

usage: python benchmarks/model_coverage.py [--fast] [--only NAME ...] [--control] [--deploy-python PATH] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # zoo.py, zoo_light.py: the models, built in code

TARGET = 0.5
DEPLOY_PYTHON = "/work/venv-deploy/bin/python"
FAST = ("mlp/torchscript", "lenet5_bn/dynamo", "transformer/torchscript", "conv1d/dynamo", "gru/torchscript")
FUSED_OPS = {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger"}


@dataclass
class Row:
    model: str
    exporter: str
    repairs: int = 0
    frozen: int = 0
    fine_tuned: bool = False
    sparsity: float | None = None
    fused: str = ""  # e.g. "12 ops" or ""
    deploy: str = ""  # onnxruntime version it ran on, or ""
    top1: float | None = None
    cosine: float | None = None
    seconds: float = 0.0
    miss: str = ""
    control: str = ""  # --control: top-1 / cosine of the same pipeline at sparsity 0

    @property
    def sparsity_ok(self) -> bool:
        return self.sparsity is not None and abs(self.sparsity - TARGET) <= 0.002

    @property
    def end_to_end(self) -> bool:
        return self.fine_tuned and self.sparsity_ok and bool(self.fused) and bool(self.deploy)


def all_cases() -> list[str]:
    import zoo
    import zoo_light

    present, why = zoo_light.available()
    if not present:
        print(f"skipping the model-zoo cases: {why}", file=sys.stderr)
    light = [f"{m}/zoo" for m in zoo_light.LIGHT] if present else []
    return [f"{m}/{e}" for m in zoo.ARCHITECTURES for e in zoo.EXPORTERS] + light


def _source(case: str, work: Path):
    """(model path, data maker, samples, batch size, epochs) for one case."""
    name, exporter = case.split("/")
    if exporter == "zoo":
        import zoo_light

        model = zoo_light.load_light(name)
        path = work / f"{name}.onnx"
        import onnx

        onnx.save(model, str(path))
        return path, lambda n, seed: zoo_light.example_inputs(model, n, seed), 40, 4, 1
    import zoo

    path = zoo.export(name, exporter, work / f"{name}.{exporter}.onnx")
    return path, lambda n, seed: zoo.example_inputs(name, n, seed), 48, 8, 2


def run_case(case: str, work: Path, deploy_python: str, stage=lambda s: None, sparsity: float = TARGET) -> Row:
    """One case in this process (run_isolated wraps it in a child)."""
    import onnx

    from onnx_flipout import compress
    from onnx_flipout.errors import FlipoutError

    name, exporter = case.split("/")
    row, t0 = Row(name, exporter), time.perf_counter()
    stage("export")
    path, make, n, batch, epochs = _source(case, work)
    original = onnx.load(str(path))
    output = original.graph.output[0].name
    train, held = make(n, 0), make(4 * batch, 1)
    stage("compress")
    out = work / "compressed.onnx"
    # compress times both models 206 times per batch size it measures; one eval sample keeps that to batch 1
    # (agreement is measured below, on `held`, against the original)
    # AdamW + scale-free MSE: measured the most robust on these random nets (soft cross-entropy has no signal on
    # Softmax outputs, and SGD's good learning rate differed 10x between ResNet-18 and ShuffleNet)
    try:
        rep = compress(path, out, data=train, eval_data={k: v[:1] for k, v in held.items()}, sparsity=sparsity,
                       quantize="int8", epochs=epochs, batch_size=batch, optimizer="adamw", lr=3e-4, distill="mse",
                       progress=False, output_name=output)
    except FlipoutError as exc:  # a refusal with its reason is a miss, not a crash
        row.miss = f"{type(exc).__name__}: {exc}"[:300]
        return _done(row, t0)
    log = rep.trainability or {}
    row.repairs, row.frozen = len(log.get("repairs", [])), len(log.get("frozen", {}))
    row.fine_tuned = bool(rep.epoch_loss) and all(math.isfinite(x) for x in rep.epoch_loss)
    row.sparsity = measured_sparsity(onnx.load(str(out)), {t.name: math.prod(t.shape) for t in rep.tensors})
    stage("deploy")
    _deploy(row, out, original, held, output, work, deploy_python)
    if not row.miss:
        row.miss = _first_miss(row)
    return _done(row, t0)


def _done(row: Row, t0: float) -> Row:
    row.seconds = round(time.perf_counter() - t0, 1)
    return row


def measured_sparsity(final, sizes: dict[str, int]) -> float:
    """1 - nonzeros / prunable weights, read from the written file; `sizes`: each prunable weight's size before
    shrinking (frozen ones included), so units shrinking removed count as pruned."""
    import numpy as np
    from onnx import numpy_helper

    from onnx_flipout.passes import DensifyInitializers

    dense = DensifyInitializers()(final).model
    inits = {t.name: t for t in dense.graph.initializer}
    dq = {n.output[0]: n.input[0] for n in dense.graph.node if n.op_type == "DequantizeLinear"}
    nonzero = 0
    for name in sizes:
        source = name if name in inits else dq.get(name)
        if source in inits:
            nonzero += int(np.count_nonzero(numpy_helper.to_array(inits[source])))
    total = sum(sizes.values())
    return 1 - nonzero / total if total else float("nan")


_DEPLOY = """
import sys, numpy as np, onnxruntime as ort
model, data, out, optimized = sys.argv[1:]
opts = ort.SessionOptions(); opts.optimized_model_filepath = optimized
s = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
with np.load(data) as d:
    y = s.run(None, {i.name: d[i.name] for i in s.get_inputs()})[0]
np.save(out, y); print(ort.__version__)
"""


def _deploy(row: Row, compressed: Path, original, held, output, work: Path, deploy_python: str) -> None:
    import numpy as np
    import onnx

    from onnx_flipout.data import Dataset
    from onnx_flipout.runtime.evaluate import agreement, predict
    from onnx_flipout.runtime.session import make_session

    np.savez(work / "held.npz", **held)
    optimized = work / "optimized.onnx"
    proc = subprocess.run([deploy_python, "-c", _DEPLOY, str(compressed), str(work / "held.npz"),
                           str(work / "deployed.npy"), str(optimized)], capture_output=True, text=True)
    if proc.returncode != 0:
        row.miss = f"newest onnxruntime failed: {proc.stderr.strip().splitlines()[-1][:160]}"
        return
    row.deploy = proc.stdout.strip()
    g = onnx.load(str(optimized)).graph
    inits = {t.name for t in g.initializer}
    weight_dq = [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    fused = [n for n in g.node if n.op_type in FUSED_OPS]
    if fused and not weight_dq:
        row.fused = f"{len(fused)} ops"
    elif not row.miss:
        row.miss = f"int8 not fused: {len(fused)} fused ops, {len(weight_dq)} weight DequantizeLinear left"
    ref = predict(make_session(original), Dataset(held), output)  # a fixed batch (zoo: 1) is run that many at a time
    got = np.load(work / "deployed.npy")
    a = agreement(ref, got)
    row.top1, row.cosine = a["top1_agreement"], a["cosine"]


def _first_miss(row: Row) -> str:
    if not row.fine_tuned:
        return "no finite training loss"
    if not row.sparsity_ok:
        return f"sparsity {row.sparsity:.4f} is not within 0.2 points of {TARGET}"
    return ""


def run_isolated(case: str, deploy_python: str = DEPLOY_PYTHON, timeout: float = 1800,
                 sparsity: float = TARGET) -> Row:
    """run_case in a child process: a crash or a hang becomes a Row with the reason, never the caller's death."""
    name, exporter = case.split("/")
    with tempfile.TemporaryDirectory(prefix="coverage-") as tmp:
        work = Path(tmp)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", case, "--work", str(work),
               "--deploy-python", deploy_python, "--sparsity", str(sparsity)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return Row(name, exporter, seconds=timeout, miss=f"timed out after {timeout:g} s in {_stage(work)}")
        result = work / "row.json"
        if proc.returncode == 0 and result.exists():
            return Row(**json.loads(result.read_text()))
        why = (f"process killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
               else (proc.stderr.strip().splitlines() or ["no output"])[-1][:220])
        return Row(name, exporter, seconds=round(time.perf_counter() - t0, 1), miss=f"{_stage(work)}: {why}")


def _stage(work: Path) -> str:
    path = work / "stage"
    return path.read_text() if path.exists() else "start"


def table(rows: list[Row]) -> str:
    yes = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    control = any(r.control for r in rows)
    lines = ["| model | exporter | repairs (frozen) | fine-tuned | sparsity | int8 fused | runs on newest ORT "
             "| top-1 / cosine vs original |" + (" same at sparsity 0 |" if control else "") + " s | miss |",
             "|---|---|---|---|---|---|---|---|" + ("---|" if control else "") + "---|---|"]
    for r in rows:
        sp = "-" if r.sparsity is None else f"{r.sparsity:.4f}" + ("" if r.sparsity_ok else " **(off)**")
        agree = "-" if r.top1 is None else f"{r.top1:.2f} / {r.cosine:.3f}"
        extra = f" {r.control or '-'} |" if control else ""
        lines.append(f"| {r.model} | {r.exporter} | {r.repairs} ({r.frozen}) | {yes(r.fine_tuned)} | {sp} | "
                     f"{r.fused or '**no**'} | {r.deploy or '**no**'} | {agree} |{extra} {r.seconds:.0f} | "
                     f"{r.miss or ''} |")
    done = sum(r.end_to_end for r in rows)
    lines.append(f"\n{done}/{len(rows)} compressed end to end ({100 * done / max(len(rows), 1):.0f} %).")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true", help=f"only {', '.join(FAST)}")
    ap.add_argument("--only", nargs="+", help="cases as model/exporter, or model names")
    ap.add_argument("--deploy-python", default=DEPLOY_PYTHON, help="python of an env with only onnxruntime + numpy")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--control", action="store_true", help="also run each case at sparsity 0 (pipeline fidelity)")
    ap.add_argument("--sparsity", type=float, default=TARGET, help=argparse.SUPPRESS)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case in this process
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        work = Path(args.work)
        row = run_case(args.one, work, args.deploy_python, stage=lambda s: (work / "stage").write_text(s),
                       sparsity=args.sparsity)
        (work / "row.json").write_text(json.dumps(asdict(row)))
        return 0
    cases = list(FAST) if args.fast else all_cases()
    if args.only:
        cases = [c for c in cases if c in args.only or c.split("/")[0] in args.only]
    rows = []
    for case in cases:
        rows.append(run_isolated(case, args.deploy_python, args.timeout))
        r = rows[-1]
        if args.control:
            c = run_isolated(case, args.deploy_python, args.timeout, sparsity=0.0)
            r.control = "-" if c.top1 is None else f"{c.top1:.2f} / {c.cosine:.3f}"
        print(f"{case}: {'ok' if r.end_to_end else 'MISS ' + r.miss} ({r.seconds:.0f} s)", file=sys.stderr, flush=True)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
