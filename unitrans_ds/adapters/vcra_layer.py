"""VCRA: a frozen Linear plus `s_M * Lambda_b ⊙ (B · (Lambda_a ⊙ (A · x)))` per output chunk (SPEC section 2).

Computed as `(A · x) · Mᵀ` with the vectors folded into `M = s · diag(Λb) · B · diag(Λa)` (same equation, fewer
passes over the activations); BERT blocks share `A · x` between their projections (shared_down.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .bank import SharedBank
from .shared_down import SharedDown


@dataclass
class Chunk:
    """An output slice of the wrapped Linear and the vector pair that adapts it.

    `owner` is the wrapper that holds the vectors under `key` (the key/value wrappers of a BERT block share the
    key wrapper's `kv` vectors; the fused ViT `qkv` uses `q` for the first third and `kv` for the other two).
    """

    key: str
    start: int
    end: int
    owner: VCRALinear | None = None  # None: this wrapper


class _AddUpdates(torch.autograd.Function):
    """`y[:, start:end] += xa · M[k]ᵀ` for each (start, end, k) of `layout`, in place on the 2-D base output `y`,
    each distinct `M[k]`'s product computed once (the fused ViT qkv with shared K/V: key and value add the same
    update). Backward: the gradient slices of a shared `M[k]` are summed first, so `∂xa` and `∂M[k]` are one
    rank-r GEMM each per distinct matrix, not per chunk. `y`'s own gradient passes through unchanged.
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor, xa: torch.Tensor, layout: tuple, *mats: torch.Tensor) -> torch.Tensor:
        ctx.layout = layout
        ctx.save_for_backward(xa, *mats)
        done: dict[int, torch.Tensor] = {}
        for start, end, k in layout:
            if k not in done:
                done[k] = xa @ mats[k].t()
            y[:, start:end] += done[k]
        ctx.mark_dirty(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xa, *mats = ctx.saved_tensors
        sums: dict[int, torch.Tensor] = {}
        for start, end, k in ctx.layout:
            part = grad[:, start:end]
            sums[k] = part if k not in sums else sums[k] + part
        d_xa, d_mats = None, [None] * len(mats)
        for k, g in sums.items():
            if ctx.needs_input_grad[1]:
                d_xa = g @ mats[k] if d_xa is None else d_xa.addmm_(g, mats[k])
            if ctx.needs_input_grad[3 + k]:
                d_mats[k] = g.t() @ xa
        return grad, d_xa, None, *d_mats


class VCRALinear(nn.Module):
    """Wraps a frozen `nn.Linear` (kept as `base_layer`) with VCRA.

    The shared bank and the modality scalar live in the model's `UniTransState` and are referenced, not owned,
    so that they are saved once. Vectors: `vcra_a[key]` (size r, init 1) and `vcra_b[key]` (size of the chunk,
    init 0), so the wrapped layer is exactly the base layer at init.
    """

    def __init__(self, base_layer: nn.Linear, bank: SharedBank, scales: nn.ParameterDict, modality: str):
        super().__init__()
        self.base_layer = base_layer
        self.modality = modality
        self.vcra_a = nn.ParameterDict()
        self.vcra_b = nn.ParameterDict()
        self.chunks: list[Chunk] = []
        self.merged = False
        # Set by `prepare_model` for BERT attention blocks: the block's shared down-projection scope and which
        # projection this is (`query`, `key` or `value`); see shared_down.py.
        self.shared_down: SharedDown | None = None
        self.role = ""
        # Plain attributes, not submodules: the bank and the scalars belong to UniTransState.
        object.__setattr__(self, "_bank", bank)
        object.__setattr__(self, "_scales", scales)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:  # HF code sometimes reads `.weight.dtype` of projections
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def add_vectors(self, key: str, rank: int, width: int) -> None:
        ref = self.base_layer.weight
        self.vcra_a[key] = nn.Parameter(torch.ones(rank, dtype=ref.dtype, device=ref.device))
        self.vcra_b[key] = nn.Parameter(torch.zeros(width, dtype=ref.dtype, device=ref.device))

    def add_chunk(self, key: str, start: int, end: int, owner: VCRALinear | None = None) -> None:
        # A plain list of dataclasses: the owner is referenced, not registered, so its vectors are saved once.
        self.chunks.append(Chunk(key, start, end, owner if owner is not self else None))

    def _vectors(self, chunk: Chunk) -> tuple[torch.Tensor, torch.Tensor]:
        owner = chunk.owner or self
        return owner.vcra_a[chunk.key], owner.vcra_b[chunk.key]

    def external_parameters(self) -> list[nn.Parameter]:
        """Parameters used in forward that this module does not own (for ZeRO-3 registration)."""
        out = [p for p in (self._bank.A, self._bank.B, self._scales[self.modality]) if isinstance(p, nn.Parameter)]
        for c in self.chunks:
            if c.owner is not None:
                out.extend(self._vectors(c))
        return out

    def update_matrix(self, chunk: Chunk, dtype: torch.dtype) -> torch.Tensor:
        """`s · diag(Λb) · B · diag(Λa)` [chunk width, r]: the vectors folded into the small r-wide matrix.

        Why: applying Λa, Λb and s to the activations costs elementwise passes over [tokens, width] in the forward
        and again in the backward; folded, they cost O(width · r), and the update is one matmul of `A · x`.
        """
        a, b = self._vectors(chunk)
        B = self._bank.B[: chunk.end - chunk.start]
        return ((b * self._scales[self.modality])[:, None] * B * a).to(dtype)

    def stacked_matrix(self, dtype: torch.dtype) -> torch.Tensor:
        """The update matrices of all chunks stacked to [d_out, r]; a key used by several chunks is folded once."""
        mats: dict[str, torch.Tensor] = {}
        for c in self.chunks:
            if c.key not in mats:
                mats[c.key] = self.update_matrix(c, dtype)
        rows = [mats[c.key] for c in self.chunks]
        return torch.cat(rows) if len(rows) > 1 else rows[0]

    def down(self, x: torch.Tensor) -> torch.Tensor:
        """`A · x` [..., r]: the bank's down-projection, the part every adapted projection of an input shares."""
        return F.linear(x, self._bank.A[:, : self.in_features].to(x.dtype))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's contribution for input `x` [..., d_in] -> [..., d_out], computed alone (no sharing)."""
        return F.linear(self.down(x), self.stacked_matrix(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        memo = self.shared_down.memo(self.role, x) if self.shared_down is not None else None
        if memo is None:
            return self._forward_alone(x)
        y = self.base_layer(x)
        # A BERT projection inside its block: A·x once per input, and one update per vector owner, so that key and
        # value with shared vectors compute their identical update once and add it twice.
        (chunk,) = self.chunks
        xa = memo("down", lambda: self.down(x))
        update = memo((chunk.owner or self, chunk.key), lambda: F.linear(xa, self.update_matrix(chunk, x.dtype)))
        return y + update

    def _forward_alone(self, x: torch.Tensor) -> torch.Tensor:
        """The fused ViT qkv, or an input no sibling shares: the base output plus (A·x)·Mᵀ added into it."""
        x2 = x.reshape(-1, x.shape[-1])  # 2-D from the start: the in-place update below then edits no view
        y2, xa2 = self.base_layer(x2), self.down(x2)
        shape = (*x.shape[:-1], self.out_features)
        keys = list(dict.fromkeys((c.owner, c.key) for c in self.chunks))
        if len(keys) == len(self.chunks):  # every chunk its own vectors: one GEMM of the stacked matrices
            return torch.addmm(y2, xa2, self.stacked_matrix(x.dtype).t()).view(shape)
        # Shared K/V: the kv update once, added to both slices (a stacked M would repeat its rows: a third more
        # rank-r GEMMs in the forward and in the backward).
        owners = {k: next(c for c in self.chunks if (c.owner, c.key) == k) for k in keys}
        mats = [self.update_matrix(owners[k], x.dtype) for k in keys]
        layout = tuple((c.start, c.end, keys.index((c.owner, c.key))) for c in self.chunks)
        return _AddUpdates.apply(y2, xa2, layout, *mats).view(shape)

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """`s · diag(Λb) · B · diag(Λa) · A` stacked over chunks: [d_out, d_in], in fp32."""
        A = self._bank.A[:, : self.in_features].float()
        rows = []
        for c in self.chunks:
            a, b = (v.float() for v in self._vectors(c))
            B = self._bank.B[: c.end - c.start].float()
            rows.append((b[:, None] * B) @ (a[:, None] * A))
        return torch.cat(rows, dim=0) * self._scales[self.modality].float()

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the frozen weight, so inference costs what the base layer costs."""
        if self.merged:
            return
        w = self.base_layer.weight
        w.copy_((w.float() + self.delta_weight()).to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of the frozen weight."""
        if not self.merged:
            return
        w = self.base_layer.weight
        w.copy_((w.float() - self.delta_weight()).to(w.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        keys = ",".join(f"{c.key}[{c.start}:{c.end}]{'*' if c.owner is not None else ''}" for c in self.chunks)
        return f"modality={self.modality}, chunks={keys}, merged={self.merged}"
