"""Graph repairs that make exported models trainable in onnxruntime-training 1.19.2, each one small Repair (a Pass).

Every repair is exact (same outputs; runtime/verify.py checks it with onnxruntime) and says what it changed.
default_repairs() lists them in the order they must run: the opset upgrade first (later rewrites emit opset-13
forms), weights computed from constants folded and shared ones untied before BatchNorm folding (a shared tensor
cannot be folded into one layer), DynamicBatch last.
"""

from __future__ import annotations

from ._edit import Editor, Outcome, Repair
from .activations import REWRITES, DifferentiableActivations, VariadicToAdd
from .batch import DynamicBatch
from .batchnorm import BatchNormToAffine, FoldBatchNorm
from .constants import FoldConstantWeights
from .freeze import FreezeInitializers, ThawInitializers, magnitude_prune
from .pooling import AveragePoolToConv, LRNToConv
from .recurrent import UnrollRecurrent
from .structure import (CastLikeToCast, DropoutMask, InitializersNotInputs, LayerNormOutputs, RemoveInferenceDropout,
                        UpgradeOpset)
from .tying import UntieInitializers


def default_repairs(keep_inputs=()) -> list[Repair]:
    """The repairs prepare_for_training applies, in order. keep_inputs: initializer-inputs the user feeds."""
    return [
        UpgradeOpset(),
        InitializersNotInputs(keep_inputs),
        RemoveInferenceDropout(),
        DropoutMask(),
        CastLikeToCast(),
        FoldConstantWeights(),
        UntieInitializers(),
        FoldBatchNorm(),
        BatchNormToAffine(),
        LayerNormOutputs(),
        DifferentiableActivations(),
        VariadicToAdd(),
        AveragePoolToConv(),
        LRNToConv(),
        UnrollRecurrent(),
        DynamicBatch(),
    ]


__all__ = [
    "Repair", "Outcome", "Editor", "default_repairs", "REWRITES",
    "UpgradeOpset", "InitializersNotInputs", "RemoveInferenceDropout", "DropoutMask", "CastLikeToCast",
    "FoldConstantWeights", "UntieInitializers", "FoldBatchNorm", "BatchNormToAffine", "LayerNormOutputs",
    "DifferentiableActivations",
    "VariadicToAdd", "AveragePoolToConv", "LRNToConv", "UnrollRecurrent", "DynamicBatch", "FreezeInitializers",
    "ThawInitializers",
    "magnitude_prune",
]
