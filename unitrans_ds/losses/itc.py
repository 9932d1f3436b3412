"""ITC: symmetric InfoNCE over the global batch with image-id positives (SPEC section 5, BLIP's recipe)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fp32_logits(rows: torch.Tensor, cols: torch.Tensor, temp: torch.Tensor | float) -> torch.Tensor:
    """`rows @ cols.T / temp` in fp32, also under a bf16/fp16 autocast.

    With logits of order 1/temp (up to 1000) a half-precision matmul and log_softmax lose about 0.7% of the ITC
    loss; the features stay in the model's dtype until here, and the cast is cheap next to the encoders.
    """
    with torch.autocast(device_type=rows.device.type, enabled=False):
        temp = temp.float() if isinstance(temp, torch.Tensor) else temp
        return rows.float() @ cols.float().t() / temp


class ITCLoss(nn.Module):
    """Told the world size; scores the local rows against every rank's features, which the caller
    gathers once per step with `collectives.gather_features` (ITM and MCAM use the same gather).

    Captions of the same image are positives: targets are the normalised `image_ids` equality matrix.
    The loss of a rank is the mean over its local rows; averaged over ranks it equals the loss of one rank that
    holds the whole batch. Logits and softmax are fp32 whatever the autocast dtype.
    """

    def __init__(self, world_size: int = 1):
        super().__init__()
        self.world_size = world_size

    def forward(
        self,
        image_feat: torch.Tensor,
        text_feat: torch.Tensor,
        image_ids: torch.Tensor,
        temp: torch.Tensor,
        image_all: torch.Tensor | None = None,
        text_all: torch.Tensor | None = None,
        ids_all: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """`image_feat`, `text_feat`: [B, D] L2-normalised; `image_ids`: [B] int64; `temp`: scalar.

        `image_all`, `text_all` [world*B, D] and `ids_all` [world*B]: the same of every rank in rank order, as
        `gather_features` returns them (gradients through the local rows); with one rank they default to the
        local ones. Returns `loss_itc` (fp32) and the local-vs-global similarity logits `sim_i2t`, `sim_t2i`
        ([B, world*B], fp32), from which ITM draws its negatives.
        """
        if image_all is None or text_all is None or ids_all is None:
            if self.world_size > 1:
                raise ValueError("ITCLoss on several ranks needs the gathered features (collectives.gather_features)")
            image_all, text_all, ids_all = image_feat, text_feat, image_ids
        sim_i2t = fp32_logits(image_feat, text_all, temp)
        sim_t2i = fp32_logits(text_feat, image_all, temp)
        pos = (image_ids.view(-1, 1) == ids_all.view(1, -1)).float()
        targets = pos / pos.sum(1, keepdim=True)
        with torch.autocast(device_type=sim_i2t.device.type, enabled=False):
            loss_i2t = -(F.log_softmax(sim_i2t, dim=1) * targets).sum(1).mean()
            loss_t2i = -(F.log_softmax(sim_t2i, dim=1) * targets).sum(1).mean()
        return {"loss_itc": (loss_i2t + loss_t2i) / 2, "sim_i2t": sim_i2t, "sim_t2i": sim_t2i}
