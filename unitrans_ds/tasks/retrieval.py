"""Image-text (and video-text) retrieval: ITC + λ·MCAM + ITM with hard negatives (SPEC sections 4 and 5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..adapters.state import get_state
from ..collectives import gather_features
from ..losses import ITCLoss, ITMLoss, MCAMLoss
from .base import Task


class RetrievalTask(Task):
    name = "retrieval"
    task_loss_parts = ("loss_itc", "loss_itm")
    max_text_tokens = 35

    def __init__(self, model, tokenizer, cfg, rank: int = 0, world_size: int = 1):
        super().__init__(model, tokenizer, cfg, rank, world_size)
        m = cfg.method
        self.itc = ITCLoss(rank, world_size)
        self.itm = ITMLoss(rank, world_size)
        self.mcam = MCAMLoss(rank, world_size, tau=m.mcam_tau) if m.uses_mcam else None
        self.mcam_weight = m.mcam_weight

    # ------------------------------------------------------------------ model-side helpers (also for evaluation)
    def image_embed(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Vision tokens [B, L, D] and the normalised ITC feature [B, E]."""
        tokens, cls = self.encode_images(pixel_values)
        return tokens, F.normalize(self.model.vision_proj(cls), dim=-1)

    def text_embed(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids, mask (padded to the fixed length so ranks can gather them) and the normalised ITC feature."""
        ids, mask = self.tokenize(texts, pad_to_max=True)
        out = self.model.text_encoder(input_ids=ids, attention_mask=mask)
        feat = F.normalize(self.model.text_proj(out.last_hidden_state[:, 0]), dim=-1)
        return ids, mask, feat

    def itm_logits(self, image_tokens: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ITM head logits [B, 2] for pairs (image_tokens[i], text ids[i]); the first token becomes [ENC]."""
        ids = ids.clone()
        ids[:, 0] = self.enc_id
        out = self.model.text_encoder(
            input_ids=ids,
            attention_mask=mask,
            encoder_hidden_states=image_tokens,
            encoder_attention_mask=self.image_mask(image_tokens),
        )
        return self.model.itm_head(out.last_hidden_state[:, 0])

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        image_tokens, image_feat = self.image_embed(batch["pixel_values"])
        ids, mask, text_feat = self.text_embed(batch["text"])
        image_ids = batch["image_idx"].to(self.device)
        temp = get_state(self.model).temperature()

        # One collective per step: ITC and MCAM read every rank's features, ITM's negatives every rank's image
        # tokens and texts; gradients flow back to each rank's local rows.
        local = dict(image_feat=image_feat, text_feat=text_feat, image_ids=image_ids, tokens=image_tokens)
        g = gather_features(dict(local, ids=ids, mask=mask), self.world_size)
        itc = self.itc(image_feat, text_feat, image_ids, temp, g["image_feat"], g["text_feat"], g["image_ids"])
        losses = {"loss_itc": itc["loss_itc"]}
        if self.mcam is not None:
            losses["loss_mcam"] = self.mcam(image_feat, text_feat, g["image_feat"], g["text_feat"], itc_temp=temp)

        # ITM: each image with a hard negative text, each text with a hard negative image, from the global batch.
        neg = self.itm.select_negatives(
            itc["sim_i2t"], itc["sim_t2i"], image_ids, g["image_ids"], seed=self.step_seed(step)
        )
        tokens_all, ids_all, mask_all = g["tokens"], g["ids"], g["mask"]
        nt, ni = neg["neg_text_for_image"], neg["neg_image_for_text"]
        pos_logits = self.itm_logits(image_tokens, ids, mask)
        neg_logits = self.itm_logits(
            torch.cat([image_tokens, tokens_all[ni]]), torch.cat([ids_all[nt], ids]), torch.cat([mask_all[nt], mask])
        )
        losses["loss_itm"] = self.itm(pos_logits, neg_logits)
        total = losses["loss_itc"] + losses["loss_itm"]
        if "loss_mcam" in losses:
            total = total + self.mcam_weight * losses["loss_mcam"]
        losses["loss"] = total
        losses["temperature"] = temp.detach()
        losses["itm_fallback_rows"] = neg["n_fallback"].float()
        return losses
