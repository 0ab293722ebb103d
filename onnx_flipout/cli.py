"""The `onnx-flipout` command line: compress, inspect, bench, demo.

Errors print one line naming the problem and exit with the error class's code (see errors.py); --debug shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings

from . import __version__
from .errors import FlipoutError

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


def _compress_args(p: argparse.ArgumentParser) -> None:
    from .config import CRITERIA, DISTILL, OPTIMIZERS, PROVIDERS, QUANTIZE, SPARSE_INDEX, CompressConfig

    d = CompressConfig()
    p.add_argument("model", help="input ONNX model")
    p.add_argument("-o", "--output", required=True, help="output ONNX model (never the input file)")
    p.add_argument("--data", required=True, help=".npz with arrays named after the model inputs (first axis = samples)")
    p.add_argument("--labels", help="name of the labels array in --data/--eval-data (else: distill from the model)")
    p.add_argument("--eval-data", help="held-out .npz (default: a seeded split of --data)")
    p.add_argument("--sparsity", type=float, default=d.sparsity, help="fraction of prunable weights to remove [0, 1)")
    p.add_argument("--criterion", choices=CRITERIA, default=d.criterion,
                   help="what to prune by (table in onnx_flipout/pruning/criteria.py; default: flipout)")
    p.add_argument("--quantize", choices=QUANTIZE, default=d.quantize)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.05 for sgd, 0.001 for adamw)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--flipout-p", type=float, default=d.flipout_p, help="exponent p in |w|^p / (flips + 1)")
    p.add_argument("--noise", type=float, default=d.noise, help="FlipOut gradient noise scale lambda (0: off)")
    p.add_argument("--prune-rate", type=float, default=d.prune_rate, help="fraction of remaining weights per event")
    p.add_argument("--alpha", type=float, default=None,
                   help="nnrelief only: keep per neuron the connections holding this share of its importance, "
                        "instead of aiming at --sparsity")
    p.add_argument("--prune-events", type=int, default=None, help="with --alpha: number of prune events (default 4)")
    p.add_argument("--output-name", help="model output to train on (default: the first)")
    p.add_argument("--distill", choices=DISTILL, default=d.distill,
                   help="loss without --labels: soft cross-entropy on [N, C] logits, or scale-free MSE (default: auto)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--provider", choices=PROVIDERS, default=d.provider)
    p.add_argument("--repair", action=argparse.BooleanOptionalAction, default=d.repair,
                   help="make the graph trainable first: exact repairs checked with onnxruntime, frozen fallback "
                        "(default: on; the report lists them)")
    p.add_argument("--shrink", action=argparse.BooleanOptionalAction, default=d.shrink,
                   help="remove units whose weights in or out are all zero (default: on; outputs unchanged)")
    p.add_argument("--sparse-index", choices=SPARSE_INDEX, default=d.sparse_index,
                   help="int32: ~45 %% smaller sparse tensors; loads in onnxruntime, not valid for onnx.checker")
    p.add_argument("--report", help="write the report as JSON here")
    p.add_argument("--max-bytes", type=_byte_size, default=d.max_bytes,
                   help="largest size a model or data file may declare, e.g. 512M or 16G (default 8G)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--checkpoint-dir", help="save fine-tuning checkpoints in this folder (atomically; latest kept)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default: each epoch)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --checkpoint-dir (same model, data and options)")


def _byte_size(text: str) -> int:
    """'4096', '512M', '16G' (binary units) -> bytes."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = units.get(t[-1:], 1)
    try:
        value = float(t[:-1] if t[-1:] in units else t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M, 16G)") from None
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"size must be >= 1 byte, got {text!r}")
    return int(value)


def _cmd_compress(a: argparse.Namespace) -> int:
    from .api import compress
    from .config import CompressConfig

    cfg = CompressConfig(
        sparsity=a.sparsity, criterion=a.criterion, quantize=a.quantize, epochs=a.epochs, batch_size=a.batch_size,
        lr=a.lr, optimizer=a.optimizer, momentum=a.momentum, weight_decay=a.weight_decay, seed=a.seed,
        provider=a.provider, flipout_p=a.flipout_p, noise=a.noise, prune_rate=a.prune_rate,
        alpha=a.alpha, prune_events=a.prune_events,
        output_name=a.output_name, distill=a.distill, max_bytes=a.max_bytes, shrink=a.shrink, repair=a.repair,
        sparse_index=a.sparse_index,
        progress=not a.no_progress and sys.stderr.isatty(),
        checkpoint_dir=a.checkpoint_dir, checkpoint_every=a.checkpoint_every, resume=a.resume,
    )
    rep = compress(a.model, a.output, data=a.data, labels=a.labels, eval_data=a.eval_data, report=a.report, config=cfg)
    print(rep.format_text())
    return 0


def _cmd_inspect(a: argparse.Namespace) -> int:
    from .model_io import load_model
    from .passes.prunable import find_prunable_weights
    from .passes.sizes import format_table, storage_report

    model = load_model(a.model)
    print(f"{a.model}: IR {model.ir_version}, opsets "
          + ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import))
    for kind, values in (("input ", model.graph.input), ("output", model.graph.output)):
        for v in values:
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in v.type.tensor_type.shape.dim]
            print(f"  {kind} {v.name}: {dims}")
    slots = find_prunable_weights(model)
    print(f"  prunable weights: {len(slots)} tensors, {sum(s.size for s in slots):,} values")
    print(format_table(storage_report(model, a.model)))
    return 0


def _cmd_bench(a: argparse.Namespace) -> int:
    from .model_io import load_model
    from .runtime.bench import compare_latency, random_feeds
    from .runtime.session import make_session

    models = [a.model] + (a.compare or [])
    # Validate every model before onnxruntime sees any, and give it the validated bytes, not the path (which could
    # be swapped, and whose external data onnxruntime would follow unchecked).
    checked = {m: load_model(m) for m in models}
    sessions = {m: make_session(checked[m], a.provider, threads=a.threads) for m in models}
    feeds = random_feeds(sessions[a.model], a.batch)
    times = compare_latency(sessions, feeds, rounds=a.rounds)
    base = times[a.model]
    print(f"latency, batch {a.batch}, provider {a.provider}, threads {a.threads or 'all'} (median of {a.rounds} rounds)")
    for m, t in times.items():
        print(f"  {t * 1e3:10.3f} ms  {base / t:6.2f}x  {m}")
    return 0


def _cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run

    rep, paths, out = run(a.out, sparsity=a.sparsity, quantize=a.quantize, progress=sys.stderr.isatty())
    print(rep.format_text())
    print(f"\nfiles in {a.out}/: {paths['model'].name} (dense), {out.name} (compressed), report.json")
    print("try:  onnx-flipout compress "
          f"{paths['model']} -o {a.out}/small.onnx --data {paths['train']} --labels y --eval-data {paths['test']} "
          "--sparsity 0.99 --quantize none")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnx-flipout", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"onnx-flipout {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compress", help="prune while fine-tuning, quantize, store sparse; print a report")
    _compress_args(p)
    p.set_defaults(func=_cmd_compress)
    p = sub.add_parser("inspect", help="per-tensor shape, dtype, storage, sparsity and bytes")
    p.add_argument("model")
    p.set_defaults(func=_cmd_inspect)
    p = sub.add_parser("bench", help="latency of a model (and others side by side) on random inputs")
    p.add_argument("model")
    p.add_argument("--compare", nargs="+", help="more models to time in the same run")
    p.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: onnxruntime's choice)")
    p.add_argument("--rounds", type=int, default=5)
    p.set_defaults(func=_cmd_bench)
    p = sub.add_parser("demo", help="train a digits MLP, compress it to 90 %% sparsity + int8, print the report")
    p.add_argument("--out", default="flipout-demo", help="folder for the demo's files (default: ./flipout-demo)")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--quantize", choices=("int8", "none"), default="int8")
    p.set_defaults(func=_cmd_demo)
    return parser


def _interrupted(args: argparse.Namespace, argv: list[str]) -> str:
    """What Ctrl-C leaves behind and how to continue. Checkpoints are written atomically, so the newest complete one
    is valid whenever the interrupt came."""
    text = "onnx-flipout: interrupted; no output was written"
    folder = getattr(args, "checkpoint_dir", None)
    if folder is None:
        return text
    from .runtime.checkpoint import latest_step

    latest = latest_step(folder)
    if latest is None:
        return f"{text}; no checkpoint was written to {folder} yet"
    resume = [str(a) for a in argv] + ([] if "--resume" in argv else ["--resume"])
    return (f"{text}; the last checkpoint (step {latest[0]} of {latest[1]}) is in {folder}. "
            f"Continue with: onnx-flipout {shlex.join(resume)}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    warnings.formatwarning = lambda msg, cat, *_: f"onnx-flipout: warning: {msg}\n"
    try:
        return args.func(args)
    except FlipoutError as exc:
        if args.debug:
            raise
        print(f"onnx-flipout: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(_interrupted(args, argv), file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug or an onnxruntime failure we did not anticipate
        if args.debug:
            raise
        print(f"onnx-flipout: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
