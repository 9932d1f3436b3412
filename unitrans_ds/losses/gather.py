"""Gathering features across ranks with gradients (the open_clip pattern, exact for any world size)."""

from __future__ import annotations

import torch
import torch.distributed as dist


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums the incoming gradients over ranks and keeps the local slice.

    Written here rather than taken from `torch.distributed.nn` because its backward needs reduce_scatter or
    all_to_all, which the gloo backend (our CPU path) does not provide for every dtype; an all_reduce works on all.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ws, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.n = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(ws)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather(x: torch.Tensor, world_size: int, with_grad: bool = True) -> torch.Tensor:
    """Concatenate `x` [n, ...] from every rank in rank order -> [world_size * n, ...].

    With `with_grad`, gradients reach every rank's local part, so a loss averaged over ranks has exactly the
    gradient of the same loss on one rank with the whole batch. Every rank must call it with the same n.
    """
    if world_size == 1:
        return x
    if with_grad and x.requires_grad:
        return _GatherWithGrad.apply(x)
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts, dim=0)
