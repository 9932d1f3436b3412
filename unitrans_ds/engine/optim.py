"""AdamW over trainable parameters only, with warmup then cosine decay (handed to DeepSpeed as client objects).

The ITC temperature has its own parameter group and lr (`optim.temperature_lr`) and is clamped to BLIP's range
in place after every optimizer step (`clamp_temperature`), master weights included, as BLIP clamps it before each
forward: the forward then uses the raw value, so its gradient never vanishes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config.schema import OptimConfig

#: BLIP's range for the ITC temperature (`self.temp.clamp_(0.001, 0.5)` in blip_retrieval.py).
TEMPERATURE_RANGE = (0.001, 0.5)
#: Name suffix of the ITC temperature parameter (`UniTransState.temp`, attached as `model.unitrans`).
TEMPERATURE_NAME = "unitrans.temp"


#: Name fragment of QASN's parameters (`QASNLayer.qasn_a`, `qasn_b`, `qasn_alpha`, `qasn_beta`).
QASN_NAME = ".qasn_"


def param_groups(
    model: nn.Module, weight_decay: float, temperature_lr: float | None = None, qasn_lr: float | None = None
) -> list[dict]:
    """Trainable parameters in up to four groups: matrices decay; vectors and scalars do not (decaying a scaling
    vector towards 0 would switch its adapter off); the ITC temperature, without decay, at `temperature_lr`
    (its own group whatever the value, so its lr never follows the adapters' by accident); QASN's vectors, without
    decay, at `qasn_lr` when one is given (else they join the other vectors at the base lr)."""
    decay, no_decay, temp, qasn = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith(TEMPERATURE_NAME):
            temp.append(p)
        elif qasn_lr is not None and QASN_NAME in name:
            qasn.append(p)
        else:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if temp:
        groups.append({"params": temp, "weight_decay": 0.0, "lr": temperature_lr})
    if qasn:
        groups.append({"params": qasn, "weight_decay": 0.0, "lr": qasn_lr})
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.temperature_lr, cfg.qasn_lr)
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


def temperature_param(model: nn.Module) -> nn.Parameter | None:
    """The trainable ITC temperature of `model` (a task or an engine's module), or None when it does not train."""
    return next((p for n, p in model.named_parameters() if n.endswith(TEMPERATURE_NAME) and p.requires_grad), None)


@torch.no_grad()
def clamp_temperature(
    param: nn.Parameter, optimizer=None, lo: float = TEMPERATURE_RANGE[0], hi: float = TEMPERATURE_RANGE[1]
):
    """Clamp the temperature to [lo, hi] in place right after an optimizer step: on every rank, under any ZeRO stage.

    DeepSpeed keeps fp32 master weights apart from the module's parameter and writes them back at each step, so
    both are clamped. The clamp is elementwise, so each rank clamps what it holds: under ZeRO-3 the local shard
    of the master weights and of the partitioned parameter (plus the full tensor where it is persistent); under
    ZeRO-1/2 and DeepSpeed's bf16 optimizer its fragment of the flat fp32 master; under the fp16 optimizer without
    ZeRO its fp32 copy. `optimizer` is the engine's optimizer (None for a plain torch optimizer). No collective.
    """
    if hasattr(param, "ds_id"):  # ZeRO-3
        from deepspeed.utils import safe_get_local_fp32_param, safe_set_local_fp32_param

        master = safe_get_local_fp32_param(param)
        if master is not None and master.numel():
            safe_set_local_fp32_param(param, master.clamp(lo, hi))
        if param.ds_tensor.numel():
            param.ds_tensor.data.clamp_(lo, hi)
    elif hasattr(param, "_hp_mapping"):  # ZeRO-1/2, bf16 optimizer: this rank's fp32 fragment, if it holds one
        if param._hp_mapping is not None:
            param._hp_mapping.get_hp_fragment().clamp_(lo, hi)
    else:
        for lp_group, hp_group in zip(getattr(optimizer, "fp16_groups", []), getattr(optimizer, "fp32_groups", [])):
            for lp, hp in zip(lp_group, hp_group if isinstance(hp_group, list) else []):
                if lp is param:
                    hp.clamp_(lo, hi)
    if param.numel():
        param.data.clamp_(lo, hi)
