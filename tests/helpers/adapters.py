"""Adapter helpers shared by the adapter, export, processor and README tests."""

from __future__ import annotations

import torch


def _randomize_adapters(model, seed: int = 3, scale: float = 0.5) -> None:
    """Move every adapter parameter away from its init, so that tests see a non-trivial update."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and ("vcra_" in n or "qasn_" in n or "lora_" in n or ".scales." in n):
                p.add_(torch.randn(p.shape, generator=g) * scale)
