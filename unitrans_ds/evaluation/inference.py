"""The inference context every evaluator runs in: eval mode, no grad, adapters merged into the weights.

`inference_mode(task, merge)` folds VCRA and LoRA updates into the frozen weights (`merge_adapters`) so that
inference costs what the base model costs, and takes them out again on exit, even when the evaluation raises.
QASN is a side network with its own computation: it stays active, and only the model's VCRA part is merged.
Under DeepSpeed ZeRO-3 parameters are partitioned and cannot be merged in place: the trainer passes `merge=False`.

Merging adds the fp32 update and rounds to the weight's dtype; unmerging subtracts and rounds again, which in
bf16 (or even fp32) does not give back the original bits. Over many validation rounds that would drift the frozen
backbone, so the original weights are copied to CPU before merging and copied back after unmerging.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..adapters import merge_adapters, mergeable_layers, unmerge_adapters


@contextlib.contextmanager
def inference_mode(task: nn.Module, merge: bool = True) -> Iterator[int]:
    """Eval mode + `torch.no_grad()` + merged adapters for the body; restores all three on exit.

    Yields the number of merged layers (0 for frozen and full fine-tuning, or with `merge=False`).
    """
    was_training = task.training
    model = task.model
    layers = mergeable_layers(model) if merge else []
    saved = [m.base_layer.weight.detach().to("cpu", copy=True) for m in layers]
    task.eval()
    attempted = False
    try:
        with torch.no_grad():
            merged = 0
            if layers:
                attempted = True  # a merge that fails half-way still needs the restore below
                merged = merge_adapters(model)
            yield merged
    finally:
        if attempted:
            unmerge_adapters(model)
            with torch.no_grad():
                for m, w in zip(layers, saved):
                    m.base_layer.weight.copy_(w.to(m.base_layer.weight.device))
        task.train(was_training)
