"""ITM: image-text matching with hard negatives sampled from the ITC similarities (SPEC section 5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _sample_rows(weights: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One index per row from the categorical distributions `weights` [n, m] by Gumbel-max with given noise.

    A row whose weights are all zero (every candidate is a positive of the same image) falls back to a uniform
    draw over all candidates, so sampling never fails; such a pair is then not a true negative, which the
    caller counts.
    """
    empty = weights.sum(1) <= 0
    w = torch.where(empty[:, None], torch.ones_like(weights), weights)
    logits = torch.log(w.clamp_min(0)).masked_fill(w <= 0, float("-inf"))
    return (logits + noise).argmax(1)


class ITMLoss(nn.Module):
    """Told its rank and world size. Two parts, because the fusion forward lies between them:

    1. `select_negatives` picks, for each local image, a hard negative text and, for each local text, a hard
       negative image, among the global batch, with probability softmax(sim) (fp32) and same-image entries
       masked. The random draw uses Gumbel noise for the WHOLE global matrix from a generator seeded per step,
       so every rank (and a single rank holding the whole batch) draws exactly the same negatives.
    2. `forward` is the 2-class cross-entropy over [positives; negative texts; negative images] logits.
    """

    def __init__(self, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.rank, self.world_size = rank, world_size

    @torch.no_grad()
    def select_negatives(
        self,
        sim_i2t: torch.Tensor,
        sim_t2i: torch.Tensor,
        image_ids: torch.Tensor,
        image_ids_all: torch.Tensor,
        seed: int,
    ) -> dict[str, torch.Tensor]:
        """`sim_*`: [B, N] local rows vs the global batch (N = world*B). Returns global indices [B]:
        `neg_text_for_image`, `neg_image_for_text`, and `n_fallback` (rows without a true negative)."""
        b, n = sim_i2t.shape
        mask = image_ids.view(-1, 1) == image_ids_all.view(1, -1)
        w_i2t = F.softmax(sim_i2t.float(), dim=1).masked_fill(mask, 0)
        w_t2i = F.softmax(sim_t2i.float(), dim=1).masked_fill(mask, 0)
        g = torch.Generator().manual_seed(int(seed))
        # Uniform noise for the global [N, N] matrices; each rank keeps its own rows.
        u = torch.rand(2, n, n, generator=g, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
        gumbel = -torch.log(-torch.log(u)).float().to(sim_i2t.device)
        rows = slice(self.rank * b, (self.rank + 1) * b)
        neg_t = _sample_rows(w_i2t, gumbel[0, rows])
        neg_i = _sample_rows(w_t2i, gumbel[1, rows])
        fallback = (w_i2t.sum(1) <= 0).sum() + (w_t2i.sum(1) <= 0).sum()
        return {"neg_text_for_image": neg_t, "neg_image_for_text": neg_i, "n_fallback": fallback}

    def forward(self, logits_pos: torch.Tensor, logits_neg: torch.Tensor) -> torch.Tensor:
        """`logits_pos` [B, 2] for positive pairs, `logits_neg` [2B, 2] for the negatives."""
        logits = torch.cat([logits_pos, logits_neg], dim=0)
        labels = torch.cat(
            [
                torch.ones(len(logits_pos), dtype=torch.long, device=logits.device),
                torch.zeros(len(logits_neg), dtype=torch.long, device=logits.device),
            ]
        )
        return F.cross_entropy(logits.float(), labels)
