"""MCAM: Jensen-Shannon rank consistency between image->text and text->image distributions (SPEC section 4)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .itc import fp32_logits


def js_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Row-wise JS(P‖Q) = ½KL(P‖M) + ½KL(Q‖M), M = (P+Q)/2, from log-probabilities [n, k] -> [n].

    Computed in log space so saturated softmaxes (probabilities that underflow to 0) give finite values and
    gradients. Bounded by log 2.
    """
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(-1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(-1)
    return 0.5 * (kl_pm + kl_qm)


class MCAMLoss(nn.Module):
    """`L_ITR = mean_i JS(P_i ‖ Q_i)` with P_i = softmax(S[i, :]/τ), Q_i = softmax(S[:, i]/τ), S = I·Tᵀ.

    The paper writes a sum over pairs; we take the mean, as BLIP's ITC does. S is computed against the features
    the step gathered once from every rank for ITC (gradients through the local part); each rank scores its
    local pairs. MCAM runs no collective of its own.
    """

    def __init__(self, world_size: int = 1, tau: float | None = None):
        super().__init__()
        self.world_size, self.tau = world_size, tau

    def forward(
        self,
        image_feat: torch.Tensor,
        text_feat: torch.Tensor,
        image_all: torch.Tensor | None = None,
        text_all: torch.Tensor | None = None,
        itc_temp: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`image_feat`, `text_feat`: [B, D] normalised embeddings of B pairs (pair i = image i, text i).

        `image_all`, `text_all`: [world*B, D] the same features of every rank, in rank order, as
        `collectives.gather_features` returns them; with one rank they default to the local features.
        """
        if self.tau is not None:
            tau = self.tau
        elif itc_temp is not None:
            tau = itc_temp.detach()
        else:
            raise ValueError("MCAMLoss needs a fixed tau or the ITC temperature")
        if image_all is None or text_all is None:
            if self.world_size > 1:
                raise ValueError("MCAMLoss on several ranks needs the gathered features (collectives.gather_features)")
            image_all, text_all = image_feat, text_feat
        # Row i of S (image i against all texts) and column i of S (text i against all images), in fp32.
        log_p = F.log_softmax(fp32_logits(image_feat, text_all, tau), dim=1)
        log_q = F.log_softmax(fp32_logits(text_feat, image_all, tau), dim=1)
        with torch.autocast(device_type=log_p.device.type, enabled=False):
            return js_divergence(log_p, log_q).mean()
