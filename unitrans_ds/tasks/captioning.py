"""Captioning: LM loss on "a picture of " + caption, prompt and padding masked out (SPEC section 5)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import BlipForConditionalGeneration

from ..collectives import all_gather_objects, on_rank0
from ..config.schema import Config
from ..data.loaders import EvalLoader
from ..evaluation import captioning as ev
from ..evaluation.inference import inference_mode
from .base import Dist, Task, TaskSettings


@dataclass(frozen=True)
class CaptioningSettings(TaskSettings):
    prompt: str
    label_smoothing: float  # of the LM loss (train.label_smoothing)
    num_beams: int
    max_length: int
    min_length: int


class CaptioningTask(Task):
    name = "captioning"
    hf_model = BlipForConditionalGeneration
    fusion_stacks = ()  # the decoder's cross-attention gets QASN only with `method.qasn_decoder`
    supports_video = False
    eval_max_words = 10_000  # references are scored whole: the 30-word cut is for texts fed to the model
    default_best_metric = "CIDEr"
    metrics = ("CIDEr", "Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "SPICE")
    task_loss_parts = ("loss_lm",)
    max_text_tokens = 40
    hf_parts = ("vision_model.", "text_decoder.")
    train_passes = {"image": 1, "decode": 1}
    settings: CaptioningSettings

    @classmethod
    def settings_from(cls, cfg: Config) -> CaptioningSettings:
        e = cfg.eval
        return CaptioningSettings(
            **TaskSettings.common(cfg),
            prompt=e.prompt,
            label_smoothing=cfg.train.label_smoothing,
            num_beams=e.num_beams,
            max_length=e.max_length,
            min_length=e.min_length,
        )

    @classmethod
    def eval_flops(cls, pieces: dict[str, float], images: int, texts: int, settings: CaptioningSettings) -> float:  # noqa: ARG003 (the interface's)
        """Beam search: `num_beams` x about `max_length` decoder steps of one token per image."""
        steps = settings.num_beams * settings.max_length / cls.max_text_tokens
        return images * (pieces["image"] + steps * pieces["decode"])

    def __init__(self, model, tokenizer, settings: CaptioningSettings, dist: Dist):
        super().__init__(model, tokenizer, settings, dist)
        self.prompt = settings.prompt
        # Prompt tokens without the trailing [SEP]; they are context, not targets.
        self.prompt_length = len(tokenizer(self.prompt).input_ids) - 1
        self.label_smoothing = settings.label_smoothing

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

    def training_step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:  # noqa: ARG002 (the interface's)
        image_tokens, _ = self.encode_images(batch["pixel_values"])
        loss = self.caption_loss(image_tokens, batch["text"])
        return {"loss": loss, "loss_lm": loss.detach()}

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor) -> list[str]:
        """Beam search from the prompt (beams, min/max length from `eval`), decoded without the prompt."""
        e = self.settings
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

    def evaluate(self, loader: EvalLoader, dist: Dist, out_dir: str | Path, merge: bool = True) -> dict[str, float]:
        """Caption metrics on the loader's split (a collective; `evaluation/captioning.py` has the steps).

        Returns Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr, SPICE (only where it can run) and n_images, equal on every
        rank. Rank 0 writes `caption_results.json` (`[{"image_id", "caption"}]`, COCO results format) and
        `caption_references.json` (COCO ground-truth format) into `out_dir`. Raises `NoGroundTruthError` (after
        writing the results) when the split has no captions.
        """
        with inference_mode(self, merge):
            local = ev.generate_captions(self, loader, dist.rank)
        records = ev.merge_ranks(all_gather_objects(local, dist.world_size))
        split = str(loader.manifest.folder)
        return on_rank0(lambda: ev.score_and_write(records, Path(out_dir), split), dist.rank, dist.world_size)
