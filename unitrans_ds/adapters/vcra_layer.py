"""VCRA: a frozen Linear plus `s_M * Lambda_b ⊙ (B · (Lambda_a ⊙ (A · x)))` per output chunk (SPEC section 2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .bank import SharedBank


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

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's contribution for input `x` [..., d_in] -> [..., d_out]."""
        A, B = self._bank.A[:, : self.in_features], self._bank.B
        xa = F.linear(x, A.to(x.dtype))
        parts, cache = [], {}
        for c in self.chunks:
            if c.key not in cache:
                a, b = self._vectors(c)
                cache[c.key] = F.linear(xa * a, B[: c.end - c.start].to(x.dtype)) * b
            parts.append(cache[c.key])
        out = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
        return out * self._scales[self.modality].to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged:
            return y
        return y + self.delta(x)

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
