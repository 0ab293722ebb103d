"""Loss gradients of the live model without optimizer steps: what SNIP scores connections by.

Forward/backward runs on a few batches through the real onnxruntime-training Module. Its gradient buffers
accumulate across calls until `lazy_reset_grad` (measured in 1.19.2: two calls give g1 + g2 exactly), so the sum is
read once from the zero-copy `.grad` views and divided by the number of batches: the mean of the batch-mean
gradients. No optimizer step runs, so the weights are untouched, and the buffers are reset afterwards so that the
first training step starts from clean gradients.
"""

from __future__ import annotations

import numpy as np

from .trainer import Trainer


def mean_gradients(trainer: Trainer, inputs: dict[str, np.ndarray], target: np.ndarray,
                   batches: list[np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """Mean loss gradient of the tensors `names` over the batches of sample indices `batches` (copies)."""
    if not batches:
        raise ValueError("gradients need at least one batch")
    module = trainer.module
    feed_names = module.input_names()
    target_name = next(n for n in feed_names if n not in inputs)
    module.train()
    module.lazy_reset_grad()  # the first call below overwrites whatever the buffers held
    for idx in batches:
        feeds = {**{k: v[idx] for k, v in inputs.items()}, target_name: target[idx]}
        module(*[feeds[n] for n in feed_names])
    grads = {n: trainer.params[n].grad / np.float32(len(batches)) for n in names}
    module.lazy_reset_grad()
    return grads
