"""Every cross-rank helper of the library, in one place; each is a collective that every rank must call.

Who calls what: the training step gathers its features once with `gather_features` (ITC, MCAM and ITM's
negatives share it); the trainer averages its logged losses (`mean_over_ranks`, `sum_over_ranks`), agrees on a
stop or a failed write (`any_rank`) and waits (`barrier`); the evaluators gather per-rank results
(`all_gather_objects`, `all_gather_rows`) and run rank-0-only scoring through `on_rank0`. Process-group set-up
and tear-down live in `engine/distributed.py`. With one rank or no process group every function works locally
without touching `torch.distributed` (a plain `python launchers/eval.py` has no group).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

_ALIGN = 16  # bytes: each part of the flat buffer starts aligned for any dtype, so it is viewed, not copied


class RemoteError(RuntimeError):
    """Raised on every rank when rank-0-only work (scoring, writing) failed; carries rank 0's message."""


def is_distributed(world_size: int | None = None) -> bool:
    """True when a process group is up and more than one rank takes part (`world_size` None: the group's)."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    return (dist.get_world_size() if world_size is None else world_size) > 1


def _check_world(world_size: int) -> None:
    if is_distributed(world_size) and dist.get_world_size() != world_size:
        raise ValueError(f"told world_size={world_size} but the process group has {dist.get_world_size()} ranks")


# ------------------------------------------------------------------------------------ features, with gradients
def _flat_all_gather(parts: list[torch.Tensor], world_size: int) -> list[torch.Tensor]:
    """One `all_gather` of several tensors of any dtypes: packed as bytes into one buffer, unpacked per part."""
    chunks, offsets, end = [], [], 0
    for x in parts:
        raw = x.detach().contiguous().reshape(-1).view(torch.uint8)
        pad = -raw.numel() % _ALIGN
        chunks += [raw, raw.new_zeros(pad)] if pad else [raw]
        offsets.append(end)
        end += raw.numel() + pad
    payload = torch.cat(chunks)
    out = payload.new_empty(world_size, end)
    dist.all_gather(list(out.unbind(0)), payload)
    gathered = []
    for x, start in zip(parts, offsets, strict=True):
        nbytes = x.numel() * x.element_size()
        rows = out[:, start : start + nbytes].view(x.dtype)  # [world, numel] strided view of every rank's part
        gathered.append(rows.reshape(world_size * x.shape[0], *x.shape[1:]))
    return gathered


class _GatherFeatures(torch.autograd.Function):
    """Forward: one flat all_gather. Backward: one flat all_reduce of the gradients, keeping each local slice.

    The loss of a rank reads every rank's rows, so the gradient of a local row is the sum of every rank's
    gradient for it: the all_reduce sums the full gathered gradients and each rank keeps its own rows (the
    open_clip pattern). An all_reduce rather than a reduce_scatter because gloo, our CPU path, lacks the latter
    for some dtypes. Tensors that do not require grad (token ids, masks, image ids) travel in the same buffer.
    """

    @staticmethod
    def forward(ctx, world_size: int, *parts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.world_size, ctx.rank = world_size, dist.get_rank()
        ctx.rows = [x.shape[0] for x in parts]
        ctx.grad_mask = [x.requires_grad for x in parts]
        out = _flat_all_gather(list(parts), world_size)
        ctx.shapes, ctx.dtypes, ctx.device = [o.shape for o in out], [o.dtype for o in out], out[0].device
        ctx.mark_non_differentiable(*(o for o, g in zip(out, ctx.grad_mask, strict=True) if not g))
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        live = [i for i, g in enumerate(ctx.grad_mask) if g]
        # Every rank must reduce a buffer of the same size: a gradient autograd left as None counts as zeros.
        full = [
            grads[i] if grads[i] is not None else torch.zeros(ctx.shapes[i], dtype=ctx.dtypes[i], device=ctx.device)
            for i in live
        ]
        dtype = full[0].dtype
        for g in full[1:]:
            dtype = torch.promote_types(dtype, g.dtype)
        flat = torch.cat([g.reshape(-1).to(dtype) for g in full])
        dist.all_reduce(flat)
        out: list[torch.Tensor | None] = [None] * len(ctx.grad_mask)
        for i, g, part in zip(live, full, flat.split([g.numel() for g in full]), strict=True):
            n = ctx.rows[i]
            out[i] = part.view_as(g)[ctx.rank * n : (ctx.rank + 1) * n].to(g.dtype)
        return (None, *out)


def gather_features(tensors: dict[str, torch.Tensor], world_size: int) -> dict[str, torch.Tensor]:
    """Every rank's tensors, concatenated along dim 0 in rank order: {name: [n, ...]} -> {name: [world * n, ...]}.

    One `all_gather` for all of them, whatever their dtypes (a training step's features, image ids, token ids
    and masks); every rank must pass the same names and shapes. Gradients reach every rank's local rows of the
    tensors that require grad, so a loss averaged over ranks has exactly the gradient of the same loss on one
    rank holding the whole batch (`tests/test_losses.py`); the backward runs one `all_reduce`.
    """
    if world_size == 1:
        return dict(tensors)
    _check_world(world_size)
    names, parts = list(tensors), list(tensors.values())
    if torch.is_grad_enabled() and any(x.requires_grad for x in parts):
        out = _GatherFeatures.apply(world_size, *parts)
    else:
        out = _flat_all_gather(parts, world_size)
    return dict(zip(names, out, strict=True))


# ------------------------------------------------------------------------------------ scalars and flags
def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar values over ranks (every rank must call it with the same keys)."""
    if not values:
        return {}
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    if is_distributed():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def sum_over_ranks(values: dict[str, int], device: torch.device, keys: list[str]) -> dict[str, int]:
    """Sum integer counts over ranks, for `keys` (missing ones count 0)."""
    t = torch.tensor([int(values.get(k, 0)) for k in keys], dtype=torch.float64, device=device)
    if is_distributed():
        dist.all_reduce(t)
    return {k: int(v) for k, v in zip(keys, t.tolist())}


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is True on any rank (e.g. "my write failed")."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    if is_distributed():
        dist.barrier()


# ------------------------------------------------------------------------------------ objects and uneven rows
def all_gather_objects(obj: Any, world_size: int | None = None) -> list[Any]:
    """Every rank's picklable `obj`, in rank order, on every rank (`world_size` None: the process group's)."""
    if world_size is not None:
        _check_world(world_size)
    if not is_distributed(world_size):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_gather_rows(t: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate every rank's `t` [n_r, ...] along dim 0 in rank order; n_r may differ between ranks.

    Rows are padded to the largest n_r for the collective and trimmed afterwards. The tensor stays on its device
    (NCCL needs CUDA tensors, gloo CPU ones) and keeps its dtype. Every rank gets the full [sum n_r, ...] tensor.
    """
    _check_world(world_size)
    if not is_distributed(world_size):
        return t
    t = t.contiguous()
    sizes = torch.tensor([t.shape[0]], dtype=torch.long, device=t.device)
    all_sizes = [torch.zeros_like(sizes) for _ in range(world_size)]
    dist.all_gather(all_sizes, sizes)
    counts = [int(s.item()) for s in all_sizes]
    padded = t.new_zeros((max(counts), *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, counts)])


def broadcast_from_rank0(obj: T, world_size: int) -> T:
    """Rank 0's picklable `obj` on every rank."""
    _check_world(world_size)
    if not is_distributed(world_size):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_rank0(fn: Callable[[], T], rank: int, world_size: int) -> T:
    """Run `fn` on rank 0 only and return its result on every rank.

    An exception in `fn` is re-raised on rank 0 as itself and on the other ranks as `RemoteError` with the same
    message, after the broadcast, so no rank is left waiting in a later collective.
    """
    result: tuple[str, Any] = ("ok", None)
    error: BaseException | None = None
    if rank == 0:
        try:
            result = ("ok", fn())
        except Exception as e:  # shared with the other ranks below, then re-raised
            error = e
            result = ("error", f"{type(e).__name__}: {e}")
    status, value = broadcast_from_rank0(result, world_size)
    if error is not None:
        raise error
    if status == "error":
        raise RemoteError(f"rank 0 failed: {value}")
    return value
