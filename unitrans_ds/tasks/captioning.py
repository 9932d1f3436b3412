"""Captioning: LM loss on "a picture of " + caption, prompt and padding masked out (SPEC section 5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Task


class CaptioningTask(Task):
    name = "captioning"
    task_loss_parts = ("loss_lm",)
    max_text_tokens = 40

    def __init__(self, model, tokenizer, cfg, rank: int = 0, world_size: int = 1):
        super().__init__(model, tokenizer, cfg, rank, world_size)
        self.prompt = cfg.eval.prompt
        # Prompt tokens without the trailing [SEP]; they are context, not targets.
        self.prompt_length = len(tokenizer(self.prompt).input_ids) - 1
        self.label_smoothing = cfg.eval.label_smoothing

    def caption_loss(self, image_tokens: torch.Tensor, captions: list[str]) -> torch.Tensor:
        ids, mask = self.tokenize([self.prompt + c for c in captions], first_token=self.bos_id)
        labels = ids.masked_fill(ids == self.pad_id, -100)
        labels[:, : self.prompt_length] = -100
        out = self.model.text_decoder(
            input_ids=ids,
            attention_mask=mask,
            encoder_hidden_states=image_tokens,
            encoder_attention_mask=self.image_mask(image_tokens),
            return_logits=True,  # logits [B, T-1, V] already shifted; the loss below owns label smoothing
        )
        return F.cross_entropy(
            out.float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, label_smoothing=self.label_smoothing
        )

    def training_step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        image_tokens, _ = self.encode_images(batch["pixel_values"])
        loss = self.caption_loss(image_tokens, batch["text"])
        return {"loss": loss, "loss_lm": loss.detach()}

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor) -> list[str]:
        """Beam search from the prompt (beams, min/max length from `eval`), decoded without the prompt."""
        e = self.cfg.eval
        image_tokens, _ = self.encode_images(pixel_values)
        b = image_tokens.shape[0]
        prompt_ids, _ = self.tokenize([self.prompt] * b, first_token=self.bos_id)
        prompt_ids = prompt_ids[:, :-1]  # drop [SEP]
        out = self.model.text_decoder.generate(
            input_ids=prompt_ids,
            eos_token_id=self.tokenizer.sep_token_id,
            pad_token_id=self.pad_id,
            encoder_hidden_states=image_tokens,
            encoder_attention_mask=self.image_mask(image_tokens),
            num_beams=e.num_beams,
            max_length=e.max_length,
            min_length=e.min_length,
            repetition_penalty=1.0,
            do_sample=False,
        )
        texts = self.tokenizer.batch_decode(out[:, self.prompt_length :], skip_special_tokens=True)
        return [t.strip() for t in texts]
