"""`SharedDown`: one down-projection `A · x` per input of a BERT attention block, reused by its projections.

Every adapted projection of a block draws on the same bank matrix A, so `A · x` depends only on the input. HF's
BERT attention feeds one input to `query`, `key` and `value` (self-attention), or the text to `query` and the image
tokens to `key` and `value` (cross-attention). Computing `A · x` once per input, and the key/value update once when
key and value share their vectors (compute once, add twice), removes a third to a half of the adapter's work,
which LoRA (a different A per projection) cannot share.

Why this design, rather than a cache keyed on the input tensor: such a cache outlives the call that filled it,
a freed tensor's id is reused, and nothing says which calls may share. Here the attention block itself opens a
scope for exactly one of its forward calls (a forward pre-hook, closed by an always-called forward hook, so an
exception or an early-stopped checkpoint recompute cannot leave it open) and declares the routing: `query` reads
`hidden_states`; `key` and `value` read `encoder_hidden_states` when given, else `hidden_states`. A wrapper
reuses a result only for the input its role is routed to, checked with `is` against the live tensor the scope
holds, so a projection fed anything else (HF changing its routing, a decoder's cached cross-attention skipping
key/value, a direct call outside the block) computes its own `A · x` with the same numerics. Results are made
lazily inside the first wrapper that needs them, so ZeRO-3 has gathered that wrapper's external parameters
(A, B, the shared vectors) when they are used, and a recompute under gradient checkpointing redoes them
through the same hooks. Hooks rather than a wrapper module around the attention block keep every parameter
name (checkpoints, adapter exports) unchanged.

QASN's side network reads the same input as the self-attention of the layer it wraps, with the same bank: it
computes `A · x` first and hands it over with `preset`, for the block's next call only and only if that call
routes the very same tensor, so the block's projections reuse it instead of computing it again.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

#: Which forward argument of the attention block feeds each projection; `None` falls back to the next name.
ROUTES: dict[str, tuple[str, ...]] = {
    "query": ("hidden_states",),
    "key": ("encoder_hidden_states", "hidden_states"),
    "value": ("encoder_hidden_states", "hidden_states"),
}


class SharedDown:
    """The per-call scope of one attention block: its inputs, and results memoised per (input, name).

    Created by `prepare_model` for each BERT attention block it adapts and referenced (not owned) by the block's
    `VCRALinear` wrappers. Outside a forward call of the block `memo` returns None and wrappers compute alone.
    """

    def __init__(self, block: nn.Module):
        names = list(inspect.signature(block.forward).parameters)
        self._position = {n: names.index(n) for r in ROUTES.values() for n in r if n in names}
        missing = {n for r in ROUTES.values() for n in r} - set(self._position)
        if missing:
            raise TypeError(
                f"{type(block).__name__}.forward has no argument {', '.join(sorted(missing))}: "
                "not a BERT attention block with query/key/value Linears"
            )
        self._inputs: dict[str, torch.Tensor] | None = None
        self._memo: dict[tuple[str, object], torch.Tensor] = {}
        self._preset: tuple[torch.Tensor, torch.Tensor] | None = None
        block.register_forward_pre_hook(self._open, with_kwargs=True)
        block.register_forward_hook(self._close, always_call=True)

    def _argument(self, name: str, args: tuple, kwargs: dict) -> torch.Tensor | None:
        if name in kwargs:
            return kwargs[name]
        i = self._position[name]
        return args[i] if i < len(args) else None

    def _open(self, block: nn.Module, args: tuple, kwargs: dict) -> None:
        inputs = {}
        for role, names in ROUTES.items():
            for name in names:
                x = self._argument(name, args, kwargs)
                if isinstance(x, torch.Tensor):
                    inputs[role] = x
                    break
        self._inputs, self._memo = inputs, {}
        preset, self._preset = self._preset, None
        if preset is not None:
            x, down = preset
            slot = next((r for r, t in inputs.items() if t is x), None)
            if slot is not None:
                self._memo[(slot, "down")] = down

    @contextmanager
    def preset(self, x: torch.Tensor, down: torch.Tensor) -> Iterator[None]:
        """Offer `down` = `A[:, :d] · x` (the bank the block's wrappers use) to the block's next forward call.

        Used only if that call routes `x` itself to a projection; the offer ends with that call or, if the block
        is not called, with the `with` block (a later step's `A` may differ).
        """
        self._preset = (x, down)
        try:
            yield
        finally:
            self._preset = None

    def _close(self, block: nn.Module, args: tuple, output: object) -> None:
        self._inputs, self._memo, self._preset = None, {}, None

    def memo(self, role: str, x: torch.Tensor) -> Callable[[object, Callable[[], torch.Tensor]], torch.Tensor] | None:
        """A `get(name, compute)` that memoises per routed input while the block runs; None when `x` is not routed.

        Two roles routed to the same tensor (self-attention; key and value in cross-attention) share the memo.
        """
        if self._inputs is None or self._inputs.get(role) is not x:
            return None
        slot = next(r for r, t in self._inputs.items() if t is x)  # the first role holding this very tensor

        def get(name: object, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
            key = (slot, name)
            if key not in self._memo:
                self._memo[key] = compute()
            return self._memo[key]

        return get
