"""Collectives for evaluation: gather Python objects and uneven tensors, run rank-0-only work and share its result.

Who calls what: the evaluators gather their per-rank results with `all_gather_objects` / `all_gather_rows`, and run
rank-0-only scoring (pycocoevalcap's Java scorers, file writing) through `on_rank0`, whose result (or error) every
rank receives, so that a failure on rank 0 becomes the same exception on every rank instead of a hang in the next
collective. With `world_size == 1` or no process group, every function works locally without touching
`torch.distributed` (a plain `python launchers/eval.py` has no process group).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


class RemoteError(RuntimeError):
    """Raised on every rank when rank-0-only work (scoring, writing) failed; carries rank 0's message."""


def is_distributed(world_size: int) -> bool:
    """True when a process group is up and more than one rank takes part."""
    return world_size > 1 and dist.is_available() and dist.is_initialized()


def _check_world(world_size: int) -> None:
    if is_distributed(world_size) and dist.get_world_size() != world_size:
        raise ValueError(
            f"evaluation was told world_size={world_size} but the process group has {dist.get_world_size()} ranks"
        )


def all_gather_objects(obj: Any, world_size: int) -> list[Any]:
    """Every rank's picklable `obj`, in rank order, on every rank (a collective: every rank must call it)."""
    _check_world(world_size)
    if not is_distributed(world_size):
        return [obj]
    out: list[Any] = [None] * world_size
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
    longest = max(counts)
    padded = t.new_zeros((longest, *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, counts)])


def broadcast_from_rank0(obj: T, world_size: int) -> T:
    """Rank 0's picklable `obj` on every rank (a collective)."""
    _check_world(world_size)
    if not is_distributed(world_size):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_rank0(fn: Callable[[], T], rank: int, world_size: int) -> T:
    """Run `fn` on rank 0 only and return its result on every rank (a collective).

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
