"""The task interface shared by retrieval, captioning and VQA (image and video).

A task is an `nn.Module` that holds the prepared BLIP model and its losses, so that DeepSpeed wraps one module
and checkpoints every trainable tensor, the ITC temperature included. The trainer calls `task(batch, step)`
(through the engine) and gets named losses with `loss` among them; evaluators call the model-side helpers
(`encode_images`, `tokenize`, ...) under `torch.no_grad()`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..config.schema import Config
from ..models.build import bos_token_id, enc_token_id


class Task(nn.Module):
    name = "task"
    #: the losses every method trains on for this task: their sum is `train/loss`, comparable across methods
    #: (a method's own extra terms, MCAM, come on top in `train/objective`, the loss that is optimised)
    task_loss_parts: tuple[str, ...] = ("loss",)
    #: text lengths in tokens, as BLIP's recipes
    max_text_tokens = 35

    def __init__(
        self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, cfg: Config, rank: int = 0, world_size: int = 1
    ):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        object.__setattr__(self, "tokenizer", tokenizer)  # not a module; kept out of state_dict
        self.enc_id = enc_token_id(tokenizer)
        self.bos_id = bos_token_id(tokenizer)
        self.pad_id = tokenizer.pad_token_id
        # HF's BLIP reads the config's image size; another size (video at 224, say) needs interpolated positions.
        self.interpolate = cfg.model.image_size != model.config.vision_config.image_size
        self.seed = cfg.train.seed

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.vision_model.parameters()).dtype

    # ------------------------------------------------------------------ shared model-side helpers
    def encode_images(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Vision tokens and the pooled CLS feature.

        Images [B, 3, H, W] -> tokens [B, L, D], cls [B, D]. Video [B, T, 3, H, W]: frames go through the ViT one
        by one; tokens of all frames are concatenated -> [B, T*L, D] (for cross-attention), and cls is the mean of
        the per-frame CLS features (for ITC). With T = 1 this is exactly the image path.
        """
        video = pixel_values.dim() == 5
        if video:
            b, t = pixel_values.shape[:2]
            pixel_values = pixel_values.flatten(0, 1)
        out = self.model.vision_model(
            pixel_values=pixel_values.to(device=self.device, dtype=self.dtype),
            interpolate_pos_encoding=self.interpolate,
        )
        tokens = out.last_hidden_state
        cls = tokens[:, 0]
        if video:
            tokens = tokens.reshape(b, t * tokens.shape[1], tokens.shape[2])
            cls = cls.reshape(b, t, -1).mean(1)
        return tokens, cls

    def tokenize(
        self, texts: list[str], max_length: int | None = None, first_token: int | None = None, pad_to_max: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask on the model's device; `first_token` replaces [CLS] (BLIP's [ENC]/[DEC])."""
        tok = self.tokenizer(
            list(texts),
            padding="max_length" if pad_to_max else "longest",
            truncation=True,
            max_length=max_length or self.max_text_tokens,
            return_tensors="pt",
        )
        ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
        if first_token is not None:
            ids[:, 0] = first_token
        return ids, mask

    def image_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.ones(tokens.shape[:-1], dtype=torch.long, device=tokens.device)

    def step_seed(self, step: int) -> int:
        """A seed shared by every rank for this step (hard-negative sampling)."""
        return (self.seed * 1_000_003 + step) % (2**63 - 1)

    def forward(self, batch: dict, step: int = 0) -> dict[str, torch.Tensor]:
        return self.training_step(batch, step)

    def training_step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def samples_in(self, batch: dict) -> int:
        return len(batch["pixel_values"])
