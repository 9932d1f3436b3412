"""AdamW over trainable parameters only, with warmup then cosine decay (handed to DeepSpeed as client objects)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config.schema import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two groups: matrices decay; vectors, scalars and the temperature do not
    (decaying a scaling vector towards 0 would switch its adapter off)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if not groups:
        raise ValueError(
            "no parameter trains with this method (`frozen`?): there is nothing to optimise; "
            "use launchers/eval.py for zero-shot evaluation"
        )
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def warmup_cosine(total_steps: int, warmup_steps: int, min_lr_ratio: float):
    """lr multiplier per optimizer step: linear warmup from 0, then cosine down to `min_lr_ratio`."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, min(cfg.warmup_steps, max(total_steps - 1, 0)), cfg.min_lr_ratio)
    )
