"""QASN: the query-augmentation side network beside a BERT fusion stack (SPEC section 3).

For block i with input x_i: `h_{i+1} = h_i + Λb_i ⊙ (B · (Λa_i ⊙ (A · x_i)))` (h_0 = 0), and the block output
becomes `b_i(x_i, x_V) + σ(α_i ⊙ h_{i+1} + β_i)`. With Λb = 0, α = 1, β = 0 and σ = tanh the stack is unchanged
at init. The side network only runs when the block runs with cross-attention (the fusion branch); the unimodal
text pass used for ITC is left alone. Whether the block runs with cross-attention is read from its
`encoder_hidden_states` argument, bound by name through the wrapped layer's signature (transformers versions
order a BERT layer's positional arguments differently).
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from .bank import SharedBank
from .shared_down import SharedDown

ACTIVATIONS = {
    "tanh": torch.tanh,
    "gelu": F.gelu,
    "silu": F.silu,
    "identity": lambda z: z,
    "sigmoid": torch.sigmoid,  # sigmoid(0) = 0.5: breaks the identity at init
}


class SideState:
    """The running side state h, shared by the wrapped blocks of one stack (reset by the first block)."""

    def __init__(self) -> None:
        self.h: torch.Tensor | None = None


class QASNLayer(nn.Module):
    """Wraps one BERT layer (`base_layer`) of a fusion stack and owns that block's QASN parameters."""

    def __init__(
        self,
        base_layer: nn.Module,
        index: int,
        last: bool,
        width: int,
        bank: SharedBank,
        side: SideState,
        activation: str,
    ):
        super().__init__()
        self.base_layer = base_layer
        self.index = index
        self.last = last
        self.activation = activation
        ref = next(base_layer.parameters())
        kw = dict(dtype=ref.dtype, device=ref.device)
        self.qasn_a = nn.Parameter(torch.ones(bank.rank, **kw))
        self.qasn_b = nn.Parameter(torch.zeros(width, **kw))
        self.qasn_alpha = nn.Parameter(torch.ones(width, **kw))
        self.qasn_beta = nn.Parameter(torch.zeros(width, **kw))
        object.__setattr__(self, "_bank", bank)
        object.__setattr__(self, "_side", side)
        # The block's own signature names its arguments: transformers 4.x passes (hidden, attention_mask,
        # head_mask, encoder_hidden_states, ...) positionally, 5.x (hidden, encoder_hidden_states, ...).
        object.__setattr__(self, "_signature", inspect.signature(base_layer.forward))
        if "encoder_hidden_states" not in self._signature.parameters:
            raise TypeError(
                f"{type(base_layer).__name__}.forward has no `encoder_hidden_states` argument; QASN wraps BERT "
                "layers with cross-attention only"
            )

    def __getattr__(self, name: str):
        # Reach the wrapped layer's submodules (`.attention`, `.crossattention`, ...) as peft's wrappers do.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    def external_parameters(self) -> list[nn.Parameter]:
        return [p for p in (self._bank.A, self._bank.B) if isinstance(p, nn.Parameter)]

    def down(self, x: torch.Tensor) -> torch.Tensor:
        """`A · x` [..., r], computed exactly as the VCRA wrappers of the same bank compute it."""
        return F.linear(x, self._bank.A[:, : x.shape[-1]].to(x.dtype))

    def side_update(self, x: torch.Tensor, down: torch.Tensor | None = None) -> torch.Tensor:
        """w_i(x) = Λb ⊙ (B · (Λa ⊙ (A · x))); `down` is `A · x` when already computed."""
        down = self.down(x) if down is None else down
        B = self._bank.B[: x.shape[-1]].to(x.dtype)
        return F.linear(down * self.qasn_a, B) * self.qasn_b

    def _self_attention_scope(self) -> SharedDown | None:
        """The shared down-projection scope of the wrapped layer's self-attention, if it draws on this bank.

        None under gradient checkpointing of the wrapped layer: its recompute runs after this call has ended, and
        must run the very ops of the forward, so the layer computes its own `A · x` then.
        """
        if getattr(self.base_layer, "gradient_checkpointing", False) and self.training:
            return None
        query = getattr(getattr(getattr(self.base_layer, "attention", None), "self", None), "query", None)
        scope = getattr(query, "shared_down", None)
        return scope if scope is not None and query._bank is self._bank else None

    def encoder_states(self, *args, **kwargs) -> torch.Tensor | None:
        """The `encoder_hidden_states` of a call to the wrapped block, bound by name through its signature."""
        return self._signature.bind(*args, **kwargs).arguments.get("encoder_hidden_states")

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        if self.encoder_states(hidden_states, *args, **kwargs) is None:
            return self.base_layer(hidden_states, *args, **kwargs)
        # The layer's self-attention reads `hidden_states` too, through the same bank: one `A · x` for both.
        down = self.down(hidden_states)
        scope = self._self_attention_scope()
        with scope.preset(hidden_states, down) if scope is not None else nullcontext():
            out = self.base_layer(hidden_states, *args, **kwargs)
        prev = self._side.h if self.index > 0 and self._side.h is not None else 0
        h = prev + self.side_update(hidden_states, down)
        # The last block drops the state so the graph is not kept alive until the next forward.
        self._side.h = None if self.last else h
        f = ACTIVATIONS[self.activation](self.qasn_alpha * h + self.qasn_beta)
        if isinstance(out, tuple):  # older transformers return (hidden_states, ...)
            return (out[0] + f, *out[1:])
        return out + f

    def extra_repr(self) -> str:
        return f"index={self.index}, activation={self.activation}"
