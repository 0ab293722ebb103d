"""Make any ONNX model trainable in onnxruntime-training 1.19.2 before artifacts are generated, and say how.

prepare_for_training(model, output_name) runs:
 1. the pre-flight (passes/preflight.py) on the model as given: what would block the gradient, and where;
 2. the repairs (passes/repairs/), each exact; the repaired graph is checked against the original with onnxruntime
    on random inputs (runtime/verify.py). When the check fails, the repairs are replayed one at a time and each
    one that changes the outputs is reverted (named in the log);
 3. the pre-flight again; every trainable weight whose gradient would still pass through a blocker is frozen and,
    when a sparsity is given, pruned one-shot by magnitude (the fallback: never crash, say so).
The returned RepairLog lists all of it for the report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import onnx

from .passes.preflight import Preflight, dropout_trains, run_preflight
from .passes.prunable import find_prunable_weights
from .passes.repairs import FreezeInitializers, InitializersNotInputs, Repair, default_repairs


@dataclass
class RepairLog:
    output: str
    blockers_before: list[str] = field(default_factory=list)  # pre-flight findings on the model as given
    repairs: list[str] = field(default_factory=list)  # "Pass: what changed"
    skipped: list[str] = field(default_factory=list)  # repairs that deliberately left a node alone, and why
    reverted: list[str] = field(default_factory=list)  # repairs undone because onnxruntime saw different outputs
    verification: dict | None = None  # runtime.verify result for the repaired graph
    frozen: dict[str, str] = field(default_factory=dict)  # tensor -> why it is frozen (and pruned one-shot)
    blockers: list[str] = field(default_factory=list)  # what still blocks after everything (should be empty)

    @property
    def modified(self) -> bool:
        return bool(self.repairs or self.frozen)

    def to_dict(self) -> dict:
        return asdict(self)

    def format_text(self) -> str:
        from .report import trainability_lines

        return "\n".join(trainability_lines(self.to_dict()) or [f"trainability ({self.output!r}): nothing to do"])


def prepare_for_training(
    model: onnx.ModelProto,
    output_name: str | None = None,
    sparsity: float = 0.0,
    verify: bool = True,
    keep_inputs=(),
    repairs: list[Repair] | None = None,
) -> tuple[onnx.ModelProto, RepairLog]:
    """The repaired model (the input is untouched) and the log. `sparsity` prunes frozen weights one-shot;
    `keep_inputs` names initializer-inputs the user feeds at run time (they stay inputs)."""
    output = output_name or model.graph.output[0].name
    # IR 3 files list every initializer as an input, which makes none of them trainable: judge them as plain
    as_given = InitializersNotInputs(keep_inputs).apply(model).model
    log = RepairLog(output, blockers_before=[str(b) for b in run_preflight(as_given, output).blockers])
    passes = list(repairs) if repairs is not None else default_repairs(keep_inputs)
    repaired = _apply(model, passes, log)
    if verify and log.repairs and _stochastic(model):
        log.verification = {"ok": True, "max_error": 0.0, "outputs": {},
                            "detail": "not verified: training-mode Dropout makes the outputs random"}
    elif verify and log.repairs:
        from .runtime.verify import verify_rewrite

        check = verify_rewrite(model, repaired)
        if not check.ok:
            repaired = _apply_verified(model, passes, log, verify_rewrite)
            check = verify_rewrite(model, repaired)
        log.verification = check.to_dict()
    repaired = _freeze_blocked(repaired, run_preflight(repaired, output), sparsity, log)
    log.blockers = [str(b) for b in run_preflight(repaired, output).blockers]
    return repaired, log


def _stochastic(model: onnx.ModelProto) -> bool:
    return any(n.op_type == "Dropout" and dropout_trains(n, model) for n in model.graph.node)


def _apply(model: onnx.ModelProto, passes: list[Repair], log: RepairLog) -> onnx.ModelProto:
    for p in passes:
        out = p.apply(model)
        model = out.model
        log.repairs += [f"{p.name}: {c}" for c in out.changes]
        log.skipped += [f"{p.name}: {s}" for s in out.skipped]
    return model


def _apply_verified(model, passes, log: RepairLog, check) -> onnx.ModelProto:
    """Replay the repairs one by one, keeping only those after which the outputs still agree."""
    log.repairs, log.skipped = [], []
    for p in passes:
        out = p.apply(model)
        if not out.changes:
            continue
        verdict = check(model, out.model)
        if verdict.ok:
            model = out.model
            log.repairs += [f"{p.name}: {c}" for c in out.changes]
            log.skipped += [f"{p.name}: {s}" for s in out.skipped]
        else:
            log.reverted.append(f"{p.name}: {verdict.detail}")
    return model


def _freeze_blocked(model: onnx.ModelProto, pre: Preflight, sparsity: float, log: RepairLog) -> onnx.ModelProto:
    """Freeze every trainable tensor whose gradient must pass a blocker; prune the weights among them once."""
    blocked = pre.blocked_params()
    if not blocked:
        return model
    reasons = {p: [str(b) for b in pre.blockers if p in b.params] for p in blocked}
    weights = {s.name for s in find_prunable_weights(model)} & set(blocked)
    out = FreezeInitializers(blocked, prune=weights, sparsity=sparsity).apply(model)
    for name in blocked:
        how = f"pruned one-shot by magnitude to {sparsity:.2%}" if name in weights and sparsity else "kept as is"
        log.frozen[name] = f"gradient blocked by {reasons[name][0]}; frozen, {how}"
    return out.model
