"""ITM: image-text matching with hard negatives sampled from the ITC similarities (SPEC section 5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _sample_rows(logits: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One index per row from softmax(logits) restricted to unmasked entries, by Gumbel-max with given noise.

    Sampling in logit space (fp32) never underflows: a row with one dominant entry masked out still samples
    among the others by their relative similarity, as BLIP's renormalised multinomial does. A row with every
    entry masked (all candidates are captions of the same image) falls back to a uniform draw over all
    entries, so sampling never fails; the caller counts those rows.
    """
    z = logits.float().masked_fill(mask, float("-inf"))
    empty = mask.all(dim=1)
    z = torch.where(empty[:, None], torch.zeros_like(z), z)
    return (z + noise).argmax(1)


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
        g = torch.Generator().manual_seed(int(seed))
        # Uniform noise for the global [N, N] matrices; each rank keeps its own rows.
        u = torch.rand(2, n, n, generator=g, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
        gumbel = -torch.log(-torch.log(u)).float().to(sim_i2t.device)
        rows = slice(self.rank * b, (self.rank + 1) * b)
        neg_t = _sample_rows(sim_i2t, mask, gumbel[0, rows])
        neg_i = _sample_rows(sim_t2i, mask, gumbel[1, rows])
        fallback = 2 * mask.all(dim=1).sum()
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
