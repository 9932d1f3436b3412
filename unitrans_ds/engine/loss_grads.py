"""Gradient norm of each loss term on its own (`train/grad_norm_<term>`), to see which term drives the adapters.

The total loss is a sum (ITC + ITM + lambda * MCAM for retrieval); its gradient tells nothing about which term
moves the trainable parameters, or whether one is stuck (ITM at its chance value gives next to no gradient) or
pulls the wrong way. Every `train.grad_norm_every` optimizer steps the trainer takes, before the real backward,
one extra backward per term over the same graph (`retain_graph`), without touching `.grad`.
"""

from __future__ import annotations

import math

import torch


def loss_grad_norms(losses: dict[str, torch.Tensor], terms: list[str], params: list[torch.Tensor]) -> dict[str, float]:
    """{term: L2 norm of d(term)/d(params)} over this rank's batch; terms missing from `losses` are skipped.

    `losses[term]` must still hold its graph; the graph is kept for the real backward that follows.
    Norms are of the terms as named, before any weight (`method.mcam_weight` scales MCAM's in the objective).
    """
    out = {}
    for term in terms:
        loss = losses.get(term)
        if loss is None or not loss.requires_grad:
            continue
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        out[term] = math.sqrt(sum(float(g.detach().float().pow(2).sum()) for g in grads if g is not None))
    return out
