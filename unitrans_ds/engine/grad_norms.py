"""Per-loss gradient norms: how hard each part of the objective (ITC, ITM, MCAM, ...) pulls on the trainable
parameters, logged beside the losses so that a part whose gradient vanishes, or one that dominates, shows up.

A loss part's gradient is taken with `torch.autograd.grad` before the step's real backward: it reads the graph
(`retain_graph=True`) and returns the gradients without writing `.grad` or running the post-accumulation hooks
that ZeRO 1/2 reduce through. It must start from the losses as the task computed them (`Task.forward(...,
keep_parts=True)`), not from the tensors the engine's forward returned: DeepSpeed hooks those, and a gradient
reaching them runs its end-of-backward reduction. So the step itself is unchanged (tested: bit-identical
adapters with and without it). ZeRO-3 partitions the parameters, so no rank has a full gradient: refused there.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..collectives import is_distributed


def loss_parts(losses: dict[str, torch.Tensor]) -> list[str]:
    """The differentiable parts of a training step's losses: `loss_*` entries with a graph (not `loss` itself)."""
    return sorted(k for k, v in losses.items() if k.startswith("loss_") and torch.is_tensor(v) and v.requires_grad)


def loss_grad_norms(losses: dict[str, torch.Tensor], params: list[torch.nn.Parameter]) -> dict[str, float]:
    """`{part: ‖∂part/∂θ‖₂}` over the trainable `params`, each part as logged (before any weight in the objective).

    With several ranks the norm is that of the rank-averaged gradient, the one the optimizer applies: each part's
    gradient is flattened and all-reduced once (every rank must call this with the same parts). Parameters a part
    does not reach count as zero.
    """
    out: dict[str, float] = {}
    for name in loss_parts(losses):
        grads = torch.autograd.grad(losses[name], params, retain_graph=True, allow_unused=True)
        flat = torch.cat(
            [
                (g if g is not None else torch.zeros_like(p)).detach().reshape(-1).float()
                for g, p in zip(grads, params, strict=True)
            ]
        )
        if is_distributed():
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
        out[name] = float(flat.norm())
    return out
