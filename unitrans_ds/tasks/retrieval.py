"""Image-text (and video-text) retrieval: ITC + λ·MCAM + ITM with hard negatives (SPEC sections 4 and 5)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import BlipForImageTextRetrieval

from ..adapters.state import get_state
from ..collectives import all_gather_objects, all_gather_rows, gather_features, on_rank0
from ..config.schema import Config
from ..data.loaders import EvalLoader
from ..evaluation import retrieval as ev
from ..evaluation.inference import inference_mode
from ..losses import ITCLoss, ITMLoss, MCAMLoss
from .base import Dist, Task, TaskSettings


@dataclass(frozen=True)
class RetrievalSettings(TaskSettings):
    mcam: bool  # the method adds MCAM (method.uses_mcam)
    mcam_weight: float
    mcam_tau: float | None
    k_test: int
    itm_beta: float
    itm_score: str
    feature_chunk: int


class RetrievalTask(Task):
    name = "retrieval"
    hf_model = BlipForImageTextRetrieval
    fusion_stacks = ("text_encoder.encoder.layer",)
    uses_temperature = True
    default_best_metric = "r_mean"
    metrics = (
        *("r_mean", "txt_r_mean", "img_r_mean", "itc_r_mean", "itc_txt_r1", "itc_img_r1"),
        *("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10"),
    )
    task_loss_parts = ("loss_itc", "loss_itm")
    max_text_tokens = 35
    fusion_passes = 3  # ITM: one positive and two negatives per sample
    own_config_keys = ("method.mcam_", "eval.k_test", "eval.itm_beta")
    hf_parts = ("vision_model.", "text_encoder.", "vision_proj.", "text_proj.", "itm_head.")
    train_passes = {"image": 1, "text": 1, "pair": 3}  # ITC, and ITM on one positive and two negatives
    settings: RetrievalSettings

    @classmethod
    def settings_from(cls, cfg: Config) -> RetrievalSettings:
        m, e = cfg.method, cfg.eval
        return RetrievalSettings(
            **TaskSettings.common(cfg),
            mcam=m.uses_mcam,
            mcam_weight=m.mcam_weight,
            mcam_tau=m.mcam_tau,
            k_test=e.k_test,
            itm_beta=e.itm_beta,
            itm_score=e.itm_score,
            feature_chunk=e.feature_chunk,
        )

    @classmethod
    def eval_flops(cls, pieces: dict[str, float], images: int, texts: int, settings: RetrievalSettings) -> float:
        """ITC on every image and text, ITM on the top `k_test` of every query in both directions."""
        return images * pieces["image"] + texts * pieces["text"] + settings.k_test * (images + texts) * pieces["pair"]

    def __init__(self, model, tokenizer, settings: RetrievalSettings, dist: Dist):
        super().__init__(model, tokenizer, settings, dist)
        self.itc = ITCLoss(dist.world_size)
        self.itm = ITMLoss(dist.rank, dist.world_size)
        self.mcam = MCAMLoss(dist.world_size, tau=settings.mcam_tau) if settings.mcam else None
        self.mcam_weight = settings.mcam_weight

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
        """ITM head logits [B, 2] for pairs (image_tokens[i], text ids[i]); the first token becomes [ENC].
        `image_tokens` [1, L, D] pairs one image with every text (the cross-attention broadcasts it)."""
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
        g = gather_features(dict(local, ids=ids, mask=mask), self.dist.world_size)
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

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, loader: EvalLoader, dist: Dist, out_dir: str | Path, merge: bool = True) -> dict[str, float]:
        """Retrieval metrics on the loader's split (a collective), by the steps of `evaluation/retrieval.py`.

        Returns txt_r1/5/10, txt_r_mean, img_r1/5/10, img_r_mean, r_mean (BLIP's definitions, percent), itc_r_mean
        (the same before ITM re-ranking), n_images, n_texts and n_itm_pairs (pairs the ITM head scored), equal on
        every rank. Rank 0 writes into `out_dir`: `retrieval_index.json` (global image and text numbering),
        `i2t_topk.jsonl` and `t2i_topk.jsonl` (per query its top-k_test candidates, best first, with final scores).
        """
        s, rank, world = self.settings, dist.rank, dist.world_size
        split = str(loader.manifest.folder)
        if rank == 0:
            width = self.model.config.vision_config.hidden_size
            estimate = ev.token_store_estimate(loader.num_items, ev.tokens_per_image(self), width)
            print(f"[unitrans_ds] {estimate} (rank 0 of {world}; each rank holds its own images)", flush=True)
        with inference_mode(self, merge):
            local = ev.encode_local_images(self, loader, rank)
            per_rank = all_gather_objects((local.ids, local.image_ids, local.captions), world)
            index = ev.build_global_index(per_rank, split)
            device = local.feat.device
            image_feat = all_gather_rows(local.feat, world)[index.image_perm.to(device)]
            chunk = ev.TEXTS_PER_IMAGE_BATCH * s.batch_size
            text_feat, text_ids, text_mask = ev.encode_texts(self, index.unique_texts, rank, world, chunk)

            # Distinct texts -> every text: duplicates are exact ties. [N, M] in fp32.
            sims = (image_feat @ text_feat.t()).float().cpu()[:, index.canon]
            n_img, n_txt = sims.shape
            topk_i2t = sims.topk(min(s.k_test, n_txt), dim=1).indices
            topk_t2i = sims.t().topk(min(s.k_test, n_img), dim=1).indices
            codes = ev.candidate_pairs(topk_i2t, topk_t2i, index.owner == rank, index.canon)
            itm = ev.score_pairs(self, local.store, index, codes, text_ids.cpu(), text_mask.cpu(), rank)

        all_codes = all_gather_rows(codes.to(device), world).cpu()
        all_itm = all_gather_rows(itm.to(device), world).cpu()
        ranked = ev.Candidates(topk_i2t, topk_t2i, sims, all_codes, all_itm)
        return on_rank0(lambda: ev.score_and_write(ranked, index, s.itm_beta, s.k_test, Path(out_dir)), rank, world)
