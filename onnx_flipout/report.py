"""What a compression run did, measured: the JSON report and the terminal table."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field


FROZEN = "frozen: no gradient reaches it, pruned one-shot by magnitude"
OFF_PATH = "not on the trained output's path: neither trained nor pruned"


@dataclass
class TensorStats:
    name: str
    shape: list[int]
    sparsity: float
    mean_flips: float | None = None  # mean sign flips per weight over fine-tuning
    flipped_fraction: float | None = None  # share of weights that flipped at least once
    role: str = "fine-tuned"  # or FROZEN, OFF_PATH

    @property
    def frozen(self) -> bool:
        return self.role == FROZEN


@dataclass
class Report:
    model: str
    output: str
    config: dict
    target_sparsity: float
    achieved_sparsity: float = 0.0
    loss: str = ""  # cross_entropy (labels) or a distillation loss (soft_cross_entropy, mse)
    prunable_weights: int = 0
    tensors: list[TensorStats] = field(default_factory=list)
    prune_events: list[dict] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0
    storage: dict = field(default_factory=dict)
    units: dict = field(default_factory=dict)  # weight -> [output units before, after] for layers shrinking changed
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    agreement: dict = field(default_factory=dict)  # on the trained output
    other_outputs: dict = field(default_factory=dict)  # output -> agreement, for the outputs not trained on
    trainability: dict | None = None  # trainability.RepairLog: blockers found, repairs, reverts, frozen weights
    latency_ms: dict = field(default_factory=dict)
    epoch_loss: list[float] = field(default_factory=list)
    stage_seconds: dict = field(default_factory=dict)
    eval_samples: int = 0
    versions: dict = field(default_factory=dict)

    @property
    def size_ratio(self) -> float:
        return self.bytes_after / max(self.bytes_before, 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size_ratio"] = self.size_ratio
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def write_json(self, path: str | os.PathLike) -> None:
        """Atomically (temporary file + rename): a failure, disk full included, leaves no partial JSON and any
        previous report intact, and raises OutputError."""
        from .model_io import write_bytes_atomic

        write_bytes_atomic(path, self.to_json().encode(), "report")

    def format_text(self) -> str:
        lines = [
            f"onnx-flipout: {self.model} -> {self.output}",
            f"  sparsity   target {self.target_sparsity:.4f}  achieved {self.achieved_sparsity:.4f}"
            f"  over {self.prunable_weights:,} prunable weights ({self.config.get('criterion')}, loss {self.loss})",
            f"  file size  {_kb(self.bytes_before)} -> {_kb(self.bytes_after)}  ({self.size_ratio:.3f}x)",
        ]
        lines += trainability_lines(self.trainability)
        if self.units:
            shrunk = ", ".join(f"{n} {a}->{b}" for n, (a, b) in self.units.items())
            lines.append(f"  shrink     dead units removed (outputs unchanged): {shrunk}")
        for note in self.storage.get("notes", []):
            lines.append(f"  note       {note}")
        if self.accuracy_before is not None:
            lines.append(
                f"  accuracy   {self.accuracy_before:.4f} -> {self.accuracy_after:.4f}"
                f"  ({self.eval_samples} held-out samples)"
            )
        if self.agreement:
            a = self.agreement
            lines.append(
                f"  agreement  top-1 {a['top1_agreement']:.4f}  cosine {a['cosine']:.5f}  max |diff| {a['max_abs_diff']:.4g}"
            )
        for name, a in self.other_outputs.items():
            lines.append(f"  output     {name[:24]}: top-1 {a['top1_agreement']:.4f}  cosine {a['cosine']:.5f}"
                         f"  max |diff| {a['max_abs_diff']:.4g}  (kept, not trained on)")
        for batch, ms in self.latency_ms.items():
            lines.append(
                f"  latency    {batch}: {ms['original']:.3f} ms -> {ms['compressed']:.3f} ms"
                f"  (speed-up {ms['original'] / max(ms['compressed'], 1e-12):.2f}x)"
            )
        lines.append("  per tensor:")
        lines.append(f"    {'name':<32} {'shape':<16} {'sparsity':>8} {'flips/w':>8} {'flipped':>8}")
        for t in self.tensors:
            flips = "-" if t.mean_flips is None else f"{t.mean_flips:.3g}"
            flipped = "-" if t.flipped_fraction is None else f"{t.flipped_fraction:.3g}"
            note = "" if t.role == "fine-tuned" else f"  {t.role}"
            lines.append(f"    {t.name[:32]:<32} {str(tuple(t.shape)):<16} {t.sparsity:>8.4f} {flips:>8} {flipped:>8}{note}")
        stages = "  ".join(f"{k} {v:.1f}s" for k, v in self.stage_seconds.items())
        lines.append(f"  wall time  {stages}")
        return "\n".join(lines)


def trainability_lines(log: dict | None) -> list[str]:
    """What was done to make the graph trainable: nothing is printed for a graph that needed nothing."""
    if not log or not (log["repairs"] or log["frozen"] or log["reverted"] or log["blockers_before"]):
        return []
    lines = [f"  repairs    {len(log['blockers_before'])} gradient blocker(s) found, {len(log['repairs'])} exact "
             f"repair(s), {len(log['reverted'])} reverted, {len(log['frozen'])} weight(s) frozen"]
    lines += [f"    repaired {r}" for r in log["repairs"]]
    lines += [f"    reverted {r}" for r in log["reverted"]]
    lines += [f"    frozen   {n}: {why}" for n, why in log["frozen"].items()]
    lines += [f"    BLOCKED  {b}" for b in log["blockers"]]
    v = log.get("verification")
    if v is not None:
        lines.append(f"    checked  {'same outputs' if v['ok'] else 'DIFFERENT outputs'} in onnxruntime "
                     f"(max error {v['max_error']:.2g}) {v.get('detail', '')}".rstrip())
    return lines


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024**2 else f"{n / 1024**2:.2f} MiB"
