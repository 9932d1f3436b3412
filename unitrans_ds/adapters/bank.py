"""The shared random low-rank matrices A (r x d_in) and B (d_out x r) of VCRA (SPEC section 2)."""

from __future__ import annotations

import torch
from torch import nn


class SharedBank(nn.Module):
    """A seeded pair of random matrices shared by every adapted layer that draws on it.

    Sized for the widest layer; a layer with smaller widths uses the leading slice. The matrices are
    re-creatable from `(seed, shape)`: when `trainable=False` they are non-persistent buffers (VeRA-style)
    and are never saved.

    Init: A ~ N(0, 1/d_in), B ~ N(0, 1/r), so `B @ (A @ x)` keeps the scale of x; with Lambda_b = 0 the
    update is zero at init anyway.
    """

    def __init__(self, rank: int, d_in: int, d_out: int, seed: int, trainable: bool = True):
        super().__init__()
        self.rank, self.d_in, self.d_out, self.seed = rank, d_in, d_out, seed
        self.trainable = trainable
        A, B = self.initial_matrices(rank, d_in, d_out, seed)
        if trainable:
            self.A = nn.Parameter(A)
            self.B = nn.Parameter(B)
        else:
            self.register_buffer("A", A, persistent=False)
            self.register_buffer("B", B, persistent=False)

    @staticmethod
    def initial_matrices(rank: int, d_in: int, d_out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        A = torch.randn(rank, d_in, generator=g) / d_in**0.5
        B = torch.randn(d_out, rank, generator=g) / rank**0.5
        return A, B

    def extra_repr(self) -> str:
        return f"rank={self.rank}, d_in={self.d_in}, d_out={self.d_out}, seed={self.seed}, trainable={self.trainable}"
