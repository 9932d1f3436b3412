"""The task interface shared by retrieval, captioning and VQA (image and video).

A task class owns the facts about its task (class attributes below: the HF model class, where QASN goes, what
one training item is, text lengths, metrics and the default best metric) and its evaluation. Every other module
asks the registry (`tasks/registry.py`) for them instead of keeping a table per task.

A task object is an `nn.Module` that holds the prepared BLIP model and its losses, so that DeepSpeed wraps one
module and checkpoints every trainable tensor, the ITC temperature included. The trainer calls
`task(batch, step)` (through the engine) and gets named losses with `loss` among them; `evaluate(loader, dist,
out_dir)` returns the task's metrics (a collective). A task is told only what it uses: its settings dataclass
(`settings_from(cfg)` picks them out of the run config) and a `Dist(rank, world_size)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..config.schema import Config
from ..models.build import bos_token_id, enc_token_id

if TYPE_CHECKING:
    from ..data.loaders import EvalLoader


@dataclass(frozen=True)
class Dist:
    """Where this process sits among the ranks: what tasks and evaluations need of the process group."""

    rank: int = 0
    world_size: int = 1


@dataclass(frozen=True)
class TaskSettings:
    """What every task reads of the run config; subclasses add their own fields (`settings_from`)."""

    image_size: int  # model.image_size
    seed: int  # train.seed: hard-negative sampling is seeded per step from it
    video: bool
    num_frames: int  # data.num_frames (video mode)
    batch_size: int  # eval.batch_size

    @staticmethod
    def common(cfg: Config) -> dict:
        return {
            "image_size": cfg.model.image_size,
            "seed": cfg.train.seed,
            "video": cfg.video,
            "num_frames": cfg.data.num_frames,
            "batch_size": cfg.eval.batch_size,
        }


class Task(nn.Module):
    #: the name in configs (`task:`) and in the registry
    name: ClassVar[str] = "task"
    #: the HF BLIP class the backbone is built as
    hf_model: ClassVar[type[PreTrainedModel]]
    #: BERT stacks that run with cross-attention (the fusion branch): where QASN goes
    fusion_stacks: ClassVar[tuple[str, ...]] = ()
    #: what one training item is, counted in the manifest: `captions` (one pair per caption) or `questions`
    item_unit: ClassVar[str] = "captions"
    #: what an evaluation scores once: `samples` (an image or clip with all its captions) or `questions`
    eval_unit: ClassVar[str] = "samples"
    #: caption words kept in evaluation (None: `data.max_words`); references are scored whole
    eval_max_words: ClassVar[int | None] = None
    #: a video mode exists (clips of `data.num_frames` frames)
    supports_video: ClassVar[bool] = True
    #: the ITC temperature is part of the task's loss (and so may train)
    uses_temperature: ClassVar[bool] = False
    #: the metric that selects the best adapter unless `train.best_metric` names another of `metrics`
    default_best_metric: ClassVar[str]
    #: the metrics `evaluate` returns that may select the best adapter (higher is better)
    metrics: ClassVar[tuple[str, ...]] = ()
    #: the losses every method trains on for this task: their sum is `train/loss`, comparable across methods
    #: (a method's own extra terms, MCAM, come on top in `train/objective`, the loss that is optimised)
    task_loss_parts: ClassVar[tuple[str, ...]] = ("loss",)
    #: text lengths in tokens, as BLIP's recipes
    max_text_tokens: ClassVar[int] = 35
    #: fusion passes per training sample (the activation estimate of the dry run)
    fusion_passes: ClassVar[int] = 1
    #: config keys (or key prefixes) that only this task reads: other tasks' runs do not log them as params
    own_config_keys: ClassVar[tuple[str, ...]] = ()
    #: the HF class's top-level modules: an original BLIP checkpoint's other keys are not this task's
    #: (`models/convert_blip.py`)
    hf_parts: ClassVar[tuple[str, ...]] = ()
    #: forward passes of the dry run's pieces (`image`, `text`, `pair`, `decode`, `answer`: dryrun/plan.py) that
    #: one training sample costs
    train_passes: ClassVar[dict[str, float]] = {}

    @classmethod
    def best_metric(cls, name: str | None) -> str:
        """The metric that selects the best adapter: `name` (`train.best_metric`, any case) or, for None, the
        task's default. A name the task's evaluation does not return is a ValueError naming the choices."""
        if name is None:
            return cls.default_best_metric
        if name.lower() not in {m.lower() for m in cls.metrics}:
            raise ValueError(
                f"`train.best_metric` must be a {cls.name} metric, one of {', '.join(cls.metrics)} (any case) or "
                f"null for {cls.default_best_metric}; got {name!r}"
            )
        return name

    @classmethod
    def settings_from(cls, cfg: Config) -> TaskSettings:
        """The task's settings out of the run config (the only place a task reads `Config`); a task with settings
        of its own overrides this with its dataclass."""
        return TaskSettings(**TaskSettings.common(cfg))

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, settings: TaskSettings, dist: Dist):
        super().__init__()
        self.model = model
        self.settings = settings
        self.dist = dist
        object.__setattr__(self, "tokenizer", tokenizer)  # not a module; kept out of state_dict
        self.enc_id = enc_token_id(tokenizer)
        self.bos_id = bos_token_id(tokenizer)
        self.pad_id = tokenizer.pad_token_id
        # HF's BLIP reads the config's image size; another size (video at 224, say) needs interpolated positions.
        self.interpolate = settings.image_size != model.config.vision_config.image_size
        self.kept_losses: dict[str, torch.Tensor] = {}  # forward(..., keep_parts=True)

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
        return (self.settings.seed * 1_000_003 + step) % (2**63 - 1)

    def forward(self, batch: dict, step: int = 0, keep_parts: bool = False) -> dict[str, torch.Tensor]:
        """The training step's losses. `keep_parts`: also keep them, as computed, in `self.kept_losses`, and return
        views of them: DeepSpeed hooks the tensors a forward returns and treats any gradient that reaches them as
        the step's backward, so `engine/grad_norms.py` differentiates the kept, un-hooked ones instead."""
        losses = self.training_step(batch, step)
        if not keep_parts:
            return losses
        self.kept_losses = losses
        return {k: v.view_as(v) for k, v in losses.items()}

    def training_step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def evaluate(
        self, loader: EvalLoader, dist: Dist, out_dir: str | Path, merge: bool = True
    ) -> dict[str, float]:  # pragma: no cover - interface
        """Metrics of this task on the loader's split, equal on every rank (a collective: every rank calls it
        with its own loader). Per-sample outputs go to `out_dir` (rank 0). `merge=False` keeps the adapters
        unmerged (ZeRO-3, where parameters are partitioned)."""
        raise NotImplementedError

    @classmethod
    def eval_flops(cls, pieces: dict[str, float], images: int, texts: int, settings: TaskSettings) -> float:
        """Forward FLOPs of one evaluation of `images` images (clips, or VQA questions) and `texts` captions, from
        the FLOPs of one forward of each piece (`dryrun/plan.py`). The dry run's planning estimate."""
        raise NotImplementedError  # pragma: no cover - interface

    def samples_in(self, batch: dict) -> int:
        return len(batch["pixel_values"])
