"""Issue 4: what pruning, shrinking and int8 buy on the newest onnxruntime CPU -- latency, load time, RSS, file bytes.

Models (built in code): an MLP 784-1024-1024-10 (Gemm + Relu) and a VGG-style CNN on 3x32x32 (conv 32-32-pool-
64-64-pool-128-128-pool, fc 2048-256-10; He-uniform weights, or the BN-free conv stack barely trains in 2 epochs).
Data is made in code from the 8x8 digits bundled with the package: upscaled x3 at a random place of a 28x28 canvas
(MLP) or of a 32x32 one with random per-channel gains (CNN), plus Gaussian noise; held-out images come from the
digits test split. The dense model is trained 2 epochs in onnxruntime-training (demo.train_dense), then
`onnx_flipout.compress` fine-tunes it with FlipOut pruning for 3 epochs. A quick run: accuracy is not the point, it
is printed so that nobody mistakes a broken model for a fast one.

Variants per model: dense fp32; onnxruntime.quantization.quantize_static of the dense model (QDQ, S8S8 activations/
weights, per-channel, MinMax on the same data; run in the dev env, which has onnxruntime.quantization); ours at 90 %
and 99 %: compress(quantize="none") gives the pruned fp32 model (stored sparse), then optionally
ShrinkDeadUnits(multiple=8), then our InsertQDQ (U8S8, calibrated like compress() does) and SparsifyInitializers
(int64 indices, checker-valid; "i32" rows: opt-in int32 indices, which onnxruntime loads but onnx.checker rejects).

Measured in /work/venv-deploy (only onnxruntime + numpy, the newest runtime): latency at batch 1 and 32 with 1 thread
and with all threads (intra_op = os.cpu_count(), inter_op 1), all variants of a model loaded in one process and
timed in interleaved rounds (each round runs every session for >= --min-time s, order rotated, and keeps its fastest
run: robust to other processes on a shared machine); latency = median over rounds, speedup = median over rounds of
t(dense) / t(variant) in the same round. Session load time and peak RSS (VmHWM after one batch-32 run, 1 thread)
come from a fresh subprocess per model (median of --load-reps).

usage: python benchmarks/speed_size.py [--quick] [--out DIR]   (run with the dev env's python)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEPLOY_PYTHON = os.environ.get("DEPLOY_PYTHON", "/work/venv-deploy/bin/python")
LR = {"mlp": 0.05, "vgg": 0.01}  # SGD momentum 0.9 for dense training and fine-tuning; 0.05 diverges on the CNN
CONFIGS = [(1, 1), (32, 1), (1, 0), (32, 0)]  # (batch, threads); 0 = all cores

# ------------------------------------------------- deploy side: run under DEPLOY_PYTHON, import only numpy, onnxruntime


def _session(path: str, threads: int):
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or os.cpu_count()
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def _feeds(session, batch: int, seed: int = 0) -> dict:
    inp = session.get_inputs()[0]
    return {inp.name: np.random.default_rng(seed).standard_normal([batch, *inp.shape[1:]]).astype(np.float32)}


def worker_latency(job: dict) -> dict:
    """{label: [ms per round]}: each round's fastest run (another process can make a run slower, never faster)."""
    sessions = {label: _session(path, job["threads"]) for label, path in job["models"]}
    feeds = _feeds(next(iter(sessions.values())), job["batch"])
    for s in [s for s in sessions.values() for _ in range(3)]:  # warm-up: first runs allocate and pack weights
        s.run(None, feeds)
    order, times = list(sessions), {label: [] for label in sessions}
    for r in range(job["rounds"]):
        for label in order[r % len(order):] + order[: r % len(order)]:
            runs, t0 = [], time.perf_counter()
            while len(runs) < 3 or time.perf_counter() - t0 < job["min_time"]:
                t1 = time.perf_counter()
                sessions[label].run(None, feeds)
                runs.append(time.perf_counter() - t1)
            times[label].append(min(runs) * 1e3)
    return times


def _status_kib(key: str) -> int:  # /proc/self/status in KiB (VmRSS: resident now, VmHWM: peak resident)
    return next(int(x.split()[1]) for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key))


def worker_load(job: dict) -> dict:
    """Load time of one model in this fresh process, and peak RSS after one batch-32 run."""
    import onnxruntime  # noqa: F401 - imported before the baseline, so the baseline includes the runtime

    base, t0 = _status_kib("VmRSS"), time.perf_counter()
    s = _session(job["path"], 1)
    load = time.perf_counter() - t0
    s.run(None, _feeds(s, 32))
    return {"load_ms": load * 1e3, "peak_rss_mib": _status_kib("VmHWM") / 1024, "base_rss_mib": base / 1024}


def worker_agree(job: dict) -> dict:
    """Accuracy on the held-out labels and top-1 agreement with the first (dense) model's predictions."""
    with np.load(job["data"]) as z:
        x, y = z["x"], z["y"]
    preds = {}
    for label, path in job["models"]:
        s = _session(path, 0)
        preds[label] = np.concatenate([s.run(None, {"x": x[i : i + 64]})[0].argmax(1) for i in range(0, len(x), 64)])
    ref = next(iter(preds.values()))
    return {k: {"top1": float((p == ref).mean()), "accuracy": float((p == y).mean())} for k, p in preds.items()}


def deploy(mode: str, job: dict) -> dict:
    """Run a worker under DEPLOY_PYTHON in a fresh process; its last stdout line is the JSON answer."""
    cmd = [DEPLOY_PYTHON, str(Path(__file__).resolve()), "--worker", mode, json.dumps(job)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{mode} worker failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------- models (dev)


def build_vgg(seed: int = 0):
    """3x3 convs (pad 1) + Relu with 2x2 max pools, Flatten, Gemm 2048-256 + Relu, Gemm 256-10 on [N, 3, 32, 32]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng, nodes, inits, prev = np.random.default_rng(seed), [], [], ["x"]

    def layer(op, name, w_shape, relu=True, **attrs):
        fan_in = int(np.prod(w_shape[1:]))  # He-uniform weights, torch's bias init
        for part, shape, bound in (("weight", w_shape, np.sqrt(6 / fan_in)), ("bias", w_shape[:1], fan_in**-0.5)):
            w = rng.uniform(-bound, bound, shape).astype(np.float32)
            inits.append(numpy_helper.from_array(w, f"{name}.{part}"))
        nodes.append(helper.make_node(op, [prev[0], f"{name}.weight", f"{name}.bias"], [name], **attrs))
        if relu:
            nodes.append(helper.make_node("Relu", [name], [f"{name}.relu"]))
        prev[0] = f"{name}.relu"

    cin = 3
    for i, c in enumerate([32, 32, "M", 64, 64, "M", 128, 128, "M"]):
        if c == "M":
            nodes.append(helper.make_node("MaxPool", prev, [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2]))
            prev[0] = f"pool{i}"
        else:
            layer("Conv", f"conv{i}", (c, cin, 3, 3), pads=[1, 1, 1, 1])
            cin = c
    nodes.append(helper.make_node("Flatten", prev, ["flat"], axis=1))
    prev[0] = "flat"
    layer("Gemm", "fc0", (256, 2048), transB=1)
    layer("Gemm", "logits", (10, 256), relu=False, transB=1)
    graph = helper.make_graph(nodes, "vgg", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def digits_images(n: int, cnn: bool, test: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n digits, upscaled x3 at a random place of a 28x28 canvas (MLP: [n, 784]) or of a 32x32 one with random
    per-channel gains (CNN: [n, 3, 32, 32]), plus Gaussian noise; and their labels."""
    from onnx_flipout.demo import load_digits

    x_tr, y_tr, x_te, y_te = load_digits()
    src, labels = (x_te, y_te) if test else (x_tr, y_tr)
    rng, size = np.random.default_rng(seed), 32 if cnn else 28
    pick, offsets = rng.integers(0, len(src), n), rng.integers(0, size - 23, (n, 2))
    x = np.zeros((n, size, size), np.float32)
    for i, (a, b) in enumerate(offsets):
        x[i, a : a + 24, b : b + 24] = np.kron(src[pick[i]].reshape(8, 8), np.ones((3, 3), np.float32))
    x = x[:, None] * rng.uniform(0.5, 1.5, (n, 3, 1, 1)) if cnn else x.reshape(n, 784)
    return (x + 0.1 * rng.standard_normal(x.shape)).astype(np.float32), labels[pick].astype(np.int64)


def quantize_static_dense(dense: Path, calib: np.ndarray, out: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    batches = iter([{"x": calib[i : i + 64]} for i in range(0, len(calib), 64)])
    reader = type("Reader", (CalibrationDataReader,), {"get_next": lambda self: next(batches, None)})()
    quantize_static(str(dense), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return out


def ours_int8(model, calib: np.ndarray):
    """Static int8 QDQ exactly as compress() inserts it: MinMax ranges of activation_tensors, then InsertQDQ."""
    from onnx_flipout.passes.quantize import InsertQDQ, activation_tensors
    from onnx_flipout.runtime.calibrate import collect_ranges

    batches = ({"x": calib[i : i + 64]} for i in range(0, len(calib), 64))
    return InsertQDQ(collect_ranges(model, batches, activation_tensors(model)))(model).model


def variants(name: str, dense, x: np.ndarray, y: np.ndarray, held: dict, out: Path, args) -> list[tuple[str, str]]:
    """Write every variant of one model; [(label, path)] with the dense fp32 model first."""
    import onnx

    from onnx_flipout import compress
    from onnx_flipout.passes import DensifyInitializers, SparsifyInitializers
    from onnx_flipout.passes.shrink import ShrinkDeadUnits
    from onnx_flipout.runtime.session import make_session

    calib = x[:512]
    paths = [("dense fp32", out / f"{name}_dense.onnx")]
    onnx.save(dense, str(paths[0][1]))
    paths.append(("quantize_static int8", quantize_static_dense(paths[0][1], calib, out / f"{name}_qs.onnx")))

    def save(label, model, index=np.int64):
        path = out / f"{name}_{label.replace(' ', '_').replace('%', '').replace('+', '')}.onnx"
        onnx.save(SparsifyInitializers(index_dtype=index)(model).model, str(path))
        paths.append((label, path))

    for s in args.sparsities:
        t0 = time.perf_counter()
        pruned_path = out / f"{name}_s{s:g}_fp32.onnx"
        rep = compress(paths[0][1], pruned_path, data={"x": x, "y": y}, labels="y", eval_data=held, sparsity=s,
                       quantize="none", epochs=args.epochs, lr=LR[name], progress=False, seed=0)
        pruned = DensifyInitializers()(onnx.load(str(pruned_path))).model
        shrunk = ShrinkDeadUnits(multiple=8)(pruned).model  # widths stay multiples of 8 where possible
        ya, yb = (make_session(m).run(None, {"x": held["x"][:256]})[0] for m in (pruned, shrunk))
        pct = f"{100 * s:g} %"
        paths.append((f"ours {pct} fp32 (sparse file)", pruned_path))
        save(f"ours {pct} int8", ours_int8(pruned, calib))
        save(f"ours {pct} shrink fp32", shrunk)
        save(f"ours {pct} shrink+int8", q_shrunk := ours_int8(shrunk, calib))
        save(f"ours {pct} shrink+int8 i32", q_shrunk, np.int32)  # same graph, opt-in compact indices
        print(f"  {name} {pct}: compress + variants {time.perf_counter() - t0:.0f} s; accuracy "
              f"{rep.accuracy_before:.3f} -> {rep.accuracy_after:.3f}; weight density % per layer "
              f"{_layers(pruned, True)}; shrink: units {_layers(pruned)} -> {_layers(shrunk)}, "
              f"max |fp32 diff| {np.abs(ya - yb).max():.2g}", flush=True)  # shrinking must not change outputs
    return [(label, str(p)) for label, p in paths]


def _layers(model, density: bool = False) -> str:
    """Units per layer in graph order ("32-32-64..."), or each layer's weight density in percent."""
    from onnx import numpy_helper

    from onnx_flipout.passes.prunable import find_prunable_weights

    inits, slots = {t.name: t for t in model.graph.initializer}, {s.name: s for s in find_prunable_weights(model)}
    order = [slots[n.input[1]] for n in model.graph.node if len(n.input) > 1 and n.input[1] in slots]
    if density:
        return " ".join(f"{100 * np.count_nonzero(numpy_helper.to_array(inits[s.name])) / s.size:.1f}" for s in order)
    return "-".join(str(s.shape[s.out_axis]) for s in order)


# ----------------------------------------------------------------------------------------------------- measure, table


def measure(models: list[tuple[str, str]], eval_path: Path, args) -> dict:
    result = {"latency": {}, "load": {}, "agree": deploy("agree", {"models": models, "data": str(eval_path)})}
    for batch, threads in CONFIGS:
        job = {"models": models, "batch": batch, "threads": threads, "rounds": args.rounds, "min_time": args.min_time}
        result["latency"][f"{batch},{threads}"] = deploy("latency", job)
    for label, path in models:
        reps = [deploy("load", {"path": path}) for _ in range(args.load_reps)]
        result["load"][label] = {k: float(np.median([r[k] for r in reps])) for k in reps[0]}
    return result


def table(models, res) -> str:
    dense, qs = models[0][0], models[1][0]
    size = {label: os.path.getsize(p) for label, p in models}
    head = ["variant", "file KiB", "÷ dense", "÷ q_static", "load ms", "peak RSS MiB (over import)"]
    head += [f"b{b} {'1 thr' if t else 'all thr'} ms (× fp32)" for b, t in CONFIGS] + ["accuracy", "top-1 agree"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, _ in models:
        ld = res["load"][label]
        cells = [label, f"{size[label] / 1024:.1f}", *(f"{size[label] / size[r]:.3f}" for r in (dense, qs)),
                 f"{ld['load_ms']:.1f}", f"{ld['peak_rss_mib']:.1f} (+{ld['peak_rss_mib'] - ld['base_rss_mib']:.1f})"]
        for b, t in CONFIGS:
            times = res["latency"][f"{b},{t}"]
            speed = np.median(np.array(times[dense]) / np.array(times[label]))
            cells.append(f"{np.median(times[label]):.3f} ({speed:.2f}×)")
        agree = res["agree"][label]
        cells += [f"{agree['accuracy']:.3f}", f"{agree['top1']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


_AT_90 = (("speedup vs dense fp32 ≥", 2.5), ("speedup vs quantize_static ≥", 1.0), ("file ÷ q_static ≤", 0.9))
_AT_99 = (("speedup vs dense fp32 ≥", 4.0), ("file ÷ q_static ≤", 0.15))
TARGETS = [  # (variant, what, bound): the targets, speed at batch 32 with 1 thread
    *[(v, w, b) for v in ("ours 90 % int8", "ours 90 % shrink+int8") for w, b in _AT_90],
    *[(v, w, b) for v in ("ours 99 % shrink+int8", "ours 99 % shrink+int8 i32") for w, b in _AT_99],
]


def targets(models, res) -> list[str]:
    size = {label: os.path.getsize(p) for label, p in models}
    t = {k: np.array(v) for k, v in res["latency"]["32,1"].items()}
    dense, qs = models[0][0], models[1][0]
    out = []
    for variant, what, bound in [target for target in TARGETS if target[0] in size]:  # --sparsities may skip some
        ref = qs if "quantize" in what else dense
        file = what.startswith("file")
        value = size[variant] / size[qs] if file else float(np.median(t[ref] / t[variant]))
        ok = value <= bound if file else value >= bound
        out.append(f"- {'PASS' if ok else 'MISS'} {variant}: {what} {bound}: {value:.3f}")
    return out


def run_model(name: str, out: Path, args) -> None:
    """Train the dense model, write its variants, measure them in the deploy env, print the table and targets."""
    from onnx_flipout.demo import build_mlp, train_dense

    cnn = name == "vgg"
    x, y = digits_images(args.samples // 2 if cnn else args.samples, cnn, test=False, seed=1)
    xe, ye = digits_images(512, cnn, test=True, seed=2)
    t0 = time.perf_counter()
    dense = train_dense(build_vgg() if cnn else build_mlp((784, 1024, 1024, 10)), x, y, epochs=args.dense_epochs,
                        lr=LR[name], progress=False)
    print(f"  {name}: dense training {time.perf_counter() - t0:.0f} s", flush=True)
    models = variants(name, dense, x, y, {"x": xe, "y": ye}, out, args)
    np.savez(out / f"{name}_eval.npz", x=xe, y=ye)
    t0 = time.perf_counter()
    res = measure(models, out / f"{name}_eval.npz", args)
    (out / f"{name}_results.json").write_text(json.dumps(res, indent=1))
    load = f"load average {os.getloadavg()[0]:.1f}"
    print(f"\n### {name} (measured in {time.perf_counter() - t0:.0f} s, {load})\n\n{table(models, res)}\n", flush=True)
    print("\n".join(targets(models, res)), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=["latency", "load", "agree"])
    ap.add_argument("job", nargs="?")
    ap.add_argument("--out", default=None, help="keep the model files here (default: a temporary folder)")
    ap.add_argument("--models", nargs="+", default=["mlp", "vgg"], choices=["mlp", "vgg"])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.99])
    for flag, default in (("--epochs", 3), ("--dense-epochs", 2), ("--samples", 4096), ("--rounds", 40),
                          ("--min-time", 0.05), ("--load-reps", 3)):  # --samples: MLP training images, CNN: half
        ap.add_argument(flag, type=type(default), default=default)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, 2 rounds, 1 load repetition")
    args = ap.parse_args()
    if args.worker:
        workers = {"latency": worker_latency, "load": worker_load, "agree": worker_agree}
        print(json.dumps(workers[args.worker](json.loads(args.job))))
        return 0
    if args.quick:
        args.epochs, args.rounds, args.min_time, args.load_reps = 1, 2, 0.05, 1
    out = Path(args.out or tempfile.mkdtemp(prefix="speed-size-"))
    out.mkdir(parents=True, exist_ok=True)
    t_start, load = time.perf_counter(), os.getloadavg()[0]
    print(f"files in {out}; deploy: {DEPLOY_PYTHON}; {os.cpu_count()} cores; load average {load:.1f}", flush=True)
    for name in args.models:
        run_model(name, out, args)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s; load average now {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
