"""Accuracy against sparsity for every pruning criterion, on the digits MLP and a digits CNN, fine-tuned from dense.

Protocol (printed again by the script):
- data: the UCI digits bundled with the package, 1438 training / 359 test images (onnx_flipout.demo.load_digits);
- models: MLP 64-300-100-10 (onnx_flipout.demo.build_mlp) and CNN conv16-conv32-maxpool-fc on 1x8x8
  (onnx_flipout.demo.build_cnn), each trained dense once in onnxruntime-training (seed 0, SGD momentum 0.9,
  lr 0.05 constant, batch 32, 40 epochs);
- each criterion fine-tunes that dense model through the public API, compress(..., quantize="none"), with SGD
  momentum 0.9, lr 0.05 constant, batch 32 and the same epoch budget for every criterion; pruning events follow each
  criterion's own schedule inside that budget;
- sparsities 1 - 2^-4, 1 - 2^-7, 1 - 2^-8 (93.75 / 99.22 / 99.61 %, the levels of FIELD-NOTES' reference table),
  counted over all Gemm/Conv weights; every run must hit round(N * s) / N exactly;
- seeds 0, 1, 2 vary the batch order, the random criterion and the noise (the dense starting point is the same);
- accuracy on the 359 test images; mean and sample standard deviation over seeds.

usage: python benchmarks/criteria_accuracy.py [--epochs N] [--seeds 0 1 2] [--out DIR] [--models mlp cnn]
                                               [--criteria NAME ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SPARSITIES = (1 - 2**-4, 1 - 2**-7, 1 - 2**-8)
NOISE = 1.0  # FlipOut's gradient noise scale lambda for the "flipout+noise" variant
# label -> compress() options: every criterion of the CLI table, plus FlipOut with noise
VARIANTS = {
    "flipout": {"criterion": "flipout"},
    "flipout+noise": {"criterion": "flipout", "noise": NOISE},
    "magnitude": {"criterion": "magnitude"},
    "layer-magnitude": {"criterion": "layer-magnitude"},
    "gmp": {"criterion": "gmp"},
    "nnrelief": {"criterion": "nnrelief"},
    "snip": {"criterion": "snip"},
    "random": {"criterion": "random"},
}
DENSE = {"epochs": 40, "lr": 0.05}


def _models(out: Path):
    """{name: (dense model path, x_train, y_train, x_test, y_test)}, training the dense models once."""
    import onnx

    from onnx_flipout.demo import build_cnn, build_mlp, load_digits, train_dense

    x_tr, y_tr, x_te, y_te = load_digits()
    image = (-1, 1, 8, 8)
    specs = {"mlp": (build_mlp(), x_tr, x_te), "cnn": (build_cnn(), x_tr.reshape(image), x_te.reshape(image))}
    out_models = {}
    for name, (model, xtr, xte) in specs.items():
        path = out / f"digits_{name}.dense.onnx"
        if not path.exists():
            onnx.save(train_dense(model, xtr, y_tr, progress=False, **DENSE), str(path))
        out_models[name] = (path, xtr, y_tr, xte, y_te)
    return out_models


def _run(spec, out: Path, label: str, sparsity: float, seed: int, epochs: int) -> dict:
    from onnx_flipout import compress

    path, xtr, ytr, xte, yte = spec
    dest = out / f"{path.stem}.{label}.s{sparsity:.5f}.seed{seed}.onnx"
    rep = compress(path, dest, data={"x": xtr, "y": ytr}, labels="y", eval_data={"x": xte, "y": yte},
                   sparsity=sparsity, quantize="none", epochs=epochs, seed=seed, progress=False, **VARIANTS[label])
    exact = round(rep.prunable_weights * sparsity) / rep.prunable_weights
    if rep.achieved_sparsity != exact:
        raise AssertionError(f"{label} at {sparsity}: achieved {rep.achieved_sparsity}, contract says {exact}")
    dest.unlink()  # only the numbers matter here
    return {"accuracy": rep.accuracy_after, "dense": rep.accuracy_before, "achieved": rep.achieved_sparsity,
            "prunable": rep.prunable_weights, "seconds": rep.stage_seconds.get("fine-tune", 0.0)}


def _table(results: dict, models: list[str], labels: list[str]) -> str:
    lines = []
    for m in models:
        first = next(iter(results[m].values()))
        lines.append(f"\n{m.upper()}  ({first[0]['prunable']:,} prunable weights, dense test accuracy "
                     f"{100 * first[0]['dense']:.2f} %)")
        lines.append(f"| criterion | {' | '.join(f'{100 * s:.2f} %' for s in SPARSITIES)} |")
        lines.append("|---|" + "---|" * len(SPARSITIES))
        for label in labels:
            cells = []
            for s in SPARSITIES:
                acc = 100 * np.array([r["accuracy"] for r in results[m][label, s]])
                cells.append(f"{acc.mean():.2f} ± {acc.std(ddof=1) if len(acc) > 1 else 0.0:.2f}")
            lines.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(lines)


def _plot(results: dict, models: list[str], labels: list[str], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.8), squeeze=False)
    density = [100 * (1 - s) for s in SPARSITIES]
    for ax, m in zip(axes[0], models):
        for i, label in enumerate(labels):
            acc = [100 * np.array([r["accuracy"] for r in results[m][label, s]]) for s in SPARSITIES]
            # alternate solid/dashed and shrink markers so that coinciding curves (flipout = magnitude) both show
            ax.errorbar(density, [a.mean() for a in acc], yerr=[a.std(ddof=1) if len(a) > 1 else 0 for a in acc],
                        marker="os^vD<>p"[i % 8], markersize=8 - 0.5 * i, linestyle="-" if i % 2 == 0 else "--",
                        capsize=3, label=label)
        dense = 100 * next(iter(results[m].values()))[0]["dense"]
        ax.axhline(dense, color="gray", linestyle=":", label=f"dense ({dense:.1f} %)")
        ax.set_xscale("log")
        ax.invert_xaxis()  # sparser to the right
        ax.set_xticks(density, [f"{100 - d:.2f} %" for d in density])
        ax.minorticks_off()
        ax.set_xlabel("sparsity (log scale of the remaining weights)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"digits {m.upper()}: fine-tuned from dense, mean ± std over seeds")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def _protocol(epochs: int, seeds: list[int]) -> str:
    return (
        "protocol: digits 1438 train / 359 test; dense models trained once in onnxruntime-training "
        f"(seed 0, SGD momentum 0.9, lr {DENSE['lr']} constant, batch 32, {DENSE['epochs']} epochs); "
        f"every criterion fine-tunes with SGD momentum 0.9, lr 0.05 constant (no decay), batch 32, {epochs} epochs, "
        f"through compress(..., quantize='none'); seeds {seeds}; flipout p=2, noise lambda={NOISE} for flipout+noise; "
        "geometric schedules prune 50 % of the remaining weights per event, evenly spaced, the last 1/(k+1) of the "
        "budget for recovery; gmp: cubic schedule over the first 75 %; snip: one shot before fine-tuning "
        "(gradients on 512 samples); nnrelief: E|x| on 512 samples at each event, one global alpha per event."
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40, help="fine-tuning epochs, the same for every criterion")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--models", nargs="+", choices=("mlp", "cnn"), default=["mlp", "cnn"])
    ap.add_argument("--criteria", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--out", default=None, help="folder for the dense models, results.json and the PNG "
                                                 "(default: a temporary folder)")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="criteria-accuracy-"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    specs = _models(out)
    print(_protocol(args.epochs, args.seeds), flush=True)
    results: dict = {}
    for m in args.models:
        results[m] = {}
        for label in args.criteria:
            for s in SPARSITIES:
                results[m][label, s] = [_run(specs[m], out, label, s, seed, args.epochs) for seed in args.seeds]
                accs = [f"{100 * r['accuracy']:.2f}" for r in results[m][label, s]]
                print(f"  {m} {label:<16} {100 * s:6.2f} %  accuracy {' '.join(accs)}  "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    print(_table(results, args.models, args.criteria))
    png = out / "criteria_accuracy.png"
    _plot(results, args.models, args.criteria, png)
    (out / "results.json").write_text(json.dumps(
        {m: {f"{label}@{s}": rs for (label, s), rs in r.items()} for m, r in results.items()}, indent=1))
    print(f"\nplot: {png}\nresults: {out / 'results.json'}\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
