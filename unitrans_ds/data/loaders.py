"""Streaming train and eval loaders over WebDataset shards, for retrieval, captioning and VQA, image or video.

Who calls what: the trainer builds one `TrainLoader` per run with its rank and world size (this module never
reads torch.distributed), calls `set_epoch(epoch, start_step)` before each pass, and iterates; evaluators build
an `EvalLoader` per split and gather `num_items` results per rank.

Batch formats (all dicts; `pixel_values` is float32 normalized with CLIP mean/std (workers hand over uint8 and
the loader normalizes in the consuming process, on `device` if given), [B, 3, H, W] for images and
[B, T, 3, H, W] for video, whose batches also carry `frame_times` [B, T] in seconds; every batch carries
`skipped`, the {kind: count} of its worker's current pass, and `worker_id`, for `skips.SkipTotals`):
- retrieval / captioning train: `text` list[str], `image_idx` int64 [B] (stable per image id, so captions of
  one image are positives across ranks). One item per (image, caption) pair.
- retrieval / captioning eval: one item per image or video: `id` list[str], `image_id` list, `captions`
  list[list[str]].
- VQA train: `question` list[str], `answers` list[list[str]] (all raw answers, lowercased), `question_id`.
- VQA eval: `question`, `question_id`, `answers`, `answer_type`, `id`. One item per question.

Epoch length: every rank takes `steps = floor(pairs / (micro_batch * world))` steps, pairs being the
manifest's captions (retrieval, captioning) or questions (VQA). Non-resampled training reads each shard once
per epoch over all ranks and workers and tops a worker up from the next shuffled round when its shards hold
fewer items than its share of steps (as open_clip does), so a few pairs may repeat and a few may wait for the
next epoch; use `resampled=True` for sampling with replacement. Evaluation reads every sample exactly once
over all ranks and workers, in a fixed order, with a partial last batch per worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import webdataset as wds
from torch.utils.data import DataLoader

from unitrans_ds.config.schema import Config
from unitrans_ds.data import pipeline as P
from unitrans_ds.data.manifest import Manifest, read_manifest
from unitrans_ds.data.skips import SkipCounter
from unitrans_ds.data.text import MAX_CAPTION_WORDS, MAX_QUESTION_WORDS, MAX_VIDEO_CAPTION_WORDS
from unitrans_ds.data.transforms import EvalTransform, TrainTransform, normalize_batch


def _task(name: str):
    """The registered task class: its `item_unit`, `eval_unit` and `eval_max_words` shape the loaders."""
    from unitrans_ds.tasks.registry import task_class  # the task classes build on this module: asked at call time

    return task_class(name)


def _manifest(shards: str | Path | Manifest) -> Manifest:
    """A run hands over the manifest it read once (`manifest.read_splits`); a folder or location is read here."""
    return shards if isinstance(shards, Manifest) else read_manifest(shards)


def _normalized(batches: Iterable[dict], device: torch.device | None) -> Iterator[dict]:
    """The last step of every loader, in the consuming process: uint8 pixels -> normalized float (on `device`)."""
    for batch in batches:
        pixels = batch["pixel_values"]
        if device is not None:
            pixels = pixels.to(device, non_blocking=True)
        batch["pixel_values"] = normalize_batch(pixels)
        yield batch


@dataclass
class TrainLoader:
    """An epoch-sized iterable of training batches for one rank.

    `steps_per_epoch` is the same on every rank. After `set_epoch(e, start_step=s)` iteration yields batches
    s..steps_per_epoch-1 of epoch e, identical to those an uninterrupted pass would give (barring corrupt
    samples among the skipped ones, which shift later items by one).
    """

    dataloader: DataLoader
    manifest: Manifest
    steps_per_epoch: int
    micro_batch_size: int
    world_size: int
    shared: P.SharedEpoch
    device: torch.device | None = None

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step must be in [0, {self.steps_per_epoch}], got {start_step}")
        self.shared.set(epoch, start_step)

    def __iter__(self) -> Iterator[dict]:
        return _normalized(self.dataloader, self.device)

    def __len__(self) -> int:
        return self.steps_per_epoch - self.shared.get()[1]


@dataclass
class EvalLoader:
    """Evaluation batches for one rank; `num_items` is how many items (images, videos or questions) it yields
    when no sample is corrupt, `total_items` the sum over ranks."""

    dataloader: DataLoader
    manifest: Manifest
    num_items: int
    total_items: int
    num_batches: int
    device: torch.device | None = None

    def __iter__(self) -> Iterator[dict]:
        return _normalized(self.dataloader, self.device)

    def __len__(self) -> int:
        return self.num_batches


def _check_common(rank: int, world_size: int, num_workers: int, batch: int, what: str) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if batch < 1:
        raise ValueError(f"{what} must be >= 1, got {batch}")


def check_shards(manifest: Manifest, world_size: int, num_workers: int, why: str) -> None:
    """Raise a clear error when a folder has fewer shards than readers (ranks x workers)."""
    slots = world_size * max(1, num_workers)
    if len(manifest.shards) < slots:
        raise ValueError(
            f"{manifest.folder} has {len(manifest.shards)} shard(s) but {why} needs at least one per reader: "
            f"{world_size} rank(s) x {max(1, num_workers)} worker(s) = {slots}. Write the split into at least "
            f"{slots} shards (a smaller `--shard_size` in `python -m unitrans_ds.make_shards`), or use fewer "
            f"workers (data.num_workers)" + (", or set data.resampled: true." if why == "training" else ".")
        )


def _resolve_video(manifest: Manifest, video: bool | None) -> bool:
    if video is None:
        return manifest.is_video
    if video != manifest.is_video:
        kind = f"video (frames={manifest.frames})" if manifest.is_video else "image"
        raise ValueError(
            f"{manifest.folder}/manifest.json describes {kind} shards but the loader was asked for "
            f"{'video' if video else 'image'} mode; point it at the right shards or set `video` accordingly."
        )
    return video


def _loader(dataset: wds.DataPipeline, num_workers: int, pin_memory: bool, persistent: bool) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent and num_workers > 0,
    )


def build_train_loader(
    shards: str | Path | Manifest,
    *,
    task: str,
    image_size: int,
    micro_batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    seed: int = 0,
    epoch: int = 0,
    resampled: bool = False,
    shuffle_buffer: int = 256,
    pair_shuffle_buffer: int = 64,
    video: bool | None = None,
    num_frames: int = 8,
    max_words: int | None = None,
    max_question_words: int = MAX_QUESTION_WORDS,
    hflip: bool = True,
    randaugment: bool = True,
    min_scale: float = 0.5,
    skip_warn_interval: float = 60.0,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    device: torch.device | str | None = None,
) -> TrainLoader:
    """Training loader for `task` over the shards folder `shards` (with manifest.json).

    `hflip=False` turns off the horizontal flip (for data whose text says "left"/"right"). `video=None`
    follows the manifest. `max_words` defaults to 30 (images) or 40 (video) caption words. With `device`,
    pixels travel as uint8 to that device and are normalized there (pair with `pin_memory=True` on GPU).
    """
    unit = _task(task).item_unit
    _check_common(rank, world_size, num_workers, micro_batch_size, "micro_batch_size")
    manifest = _manifest(shards)
    video = _resolve_video(manifest, video)
    if not resampled:
        check_shards(manifest, world_size, num_workers, "training")
    pairs = manifest.num_items(unit)
    steps = pairs // (micro_batch_size * world_size)
    if steps < 1:
        raise ValueError(
            f"{manifest.folder} holds {pairs} {unit}, fewer than one global batch of "
            f"{micro_batch_size} x {world_size} rank(s); lower the micro batch size or add data."
        )
    max_words = max_words or (MAX_VIDEO_CAPTION_WORDS if video else MAX_CAPTION_WORDS)
    counter = SkipCounter(skip_warn_interval, name=f"train loader {manifest.folder} rank {rank}")
    # what each shard should give, to count losses in samples and pairs against the manifest
    expected = {str(s.path): (s.samples, getattr(s, unit)) for s in manifest.shards}
    shared, state = P.SharedEpoch(epoch), P.PassState()
    source = P.TrainShardSource(
        [str(s.path) for s in manifest.shards],
        resampled=resampled,
        seed=seed,
        rank=rank,
        world_size=world_size,
        shared=shared,
        state=state,
        counter=counter,
    )
    transform = TrainTransform(image_size, min_scale=min_scale, hflip=hflip, randaugment=randaugment)
    dataset = wds.DataPipeline(
        source,
        P.ReadRounds(counter.handler("shard_read")),
        P.ParseSamples(counter, video, expected, unit),
        P.BufferShuffle(shuffle_buffer, "samples", seed, rank, state),
        P.ExpandItems(unit, True, max_words, max_question_words),
        P.BufferShuffle(pair_shuffle_buffer, "pairs", seed, rank, state),
        P.Number(),
        P.SkipConsumed(micro_batch_size, state),
        P.DecodeItems(
            transform,
            counter,
            state,
            train=True,
            seed=seed,
            rank=rank,
            num_frames=num_frames,
            pair_key=unit,
        ),
        wds.batched(micro_batch_size, collation_fn=P.Collate(unit, True, counter, state), partial=False),
        P.TakeShare(steps, state),
    )
    return TrainLoader(
        dataloader=_loader(dataset, num_workers, pin_memory, persistent_workers),
        manifest=manifest,
        steps_per_epoch=steps,
        micro_batch_size=micro_batch_size,
        world_size=world_size,
        shared=shared,
        device=None if device is None else torch.device(device),
    )


def build_eval_loader(
    shards: str | Path | Manifest,
    *,
    task: str,
    image_size: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    video: bool | None = None,
    num_frames: int = 8,
    max_words: int | None = None,
    max_question_words: int = MAX_QUESTION_WORDS,
    skip_warn_interval: float = 60.0,
    pin_memory: bool = False,
    device: torch.device | str | None = None,
) -> EvalLoader:
    """Evaluation loader: every sample (VQA: every question) exactly once over all ranks and workers.

    Shards are dealt in manifest order to reader slots `rank * W + worker`; each worker reads its shards in
    order, and DataLoader interleaves the workers' batches, so the order is fixed for a given (world, W).
    """
    cls = _task(task)
    _check_common(rank, world_size, num_workers, batch_size, "batch_size")
    manifest = _manifest(shards)
    video = _resolve_video(manifest, video)
    check_shards(manifest, world_size, num_workers, "evaluation")
    workers = max(1, num_workers)
    unit = cls.eval_unit
    per_worker = [
        sum(getattr(s, unit) for s in manifest.shards[rank * workers + w :: world_size * workers])
        for w in range(workers)
    ]
    max_words = max_words or (MAX_VIDEO_CAPTION_WORDS if video else MAX_CAPTION_WORDS)
    counter = SkipCounter(skip_warn_interval, name=f"eval loader {manifest.folder} rank {rank}")
    state = P.PassState()
    dataset = wds.DataPipeline(
        P.EvalShardSource(
            [str(s.path) for s in manifest.shards], rank=rank, world_size=world_size, state=state, counter=counter
        ),
        wds.tarfile_to_samples(handler=counter.handler("shard_read")),
        P.ParseSamples(counter, video),
        P.ExpandItems(cls.item_unit, False, max_words, max_question_words),
        P.DecodeItems(EvalTransform(image_size), counter, state, train=False, seed=0, rank=rank, num_frames=num_frames),
        wds.batched(batch_size, collation_fn=P.Collate(cls.item_unit, False, counter, state), partial=True),
    )
    return EvalLoader(
        dataloader=_loader(dataset, num_workers, pin_memory, persistent=False),
        manifest=manifest,
        num_items=sum(per_worker),
        total_items=manifest.num_items(unit),
        num_batches=sum(-(-n // batch_size) for n in per_worker),
        device=None if device is None else torch.device(device),
    )


def train_loader_from_config(
    cfg: Config, *, rank: int, world_size: int, epoch: int = 0, manifest: Manifest | None = None
) -> TrainLoader:
    """`build_train_loader` with the run config's data, model and train settings (the trainer's entry point);
    `manifest`: the training split's, when the run has read it already."""
    d = cfg.data
    return build_train_loader(
        manifest or d.train_shards,
        task=cfg.task,
        image_size=cfg.model.image_size,
        micro_batch_size=cfg.train.micro_batch_size,
        rank=rank,
        world_size=world_size,
        num_workers=d.num_workers,
        seed=cfg.train.seed,
        epoch=epoch,
        resampled=d.resampled,
        shuffle_buffer=d.shuffle_buffer,
        video=cfg.video,
        num_frames=d.num_frames,
        max_words=d.max_words,
        hflip=d.hflip,
        min_scale=d.min_scale,
        randaugment=d.randaugment,
    )


def eval_loader_from_config(cfg: Config, folder: str | Path | Manifest, *, rank: int, world_size: int) -> EvalLoader:
    """`build_eval_loader` over the shards `folder` (or its manifest, read already) with the run config's sizes,
    batch and workers (the evaluation runner's entry point). Caption words are cut at the task's
    `eval_max_words`, else `data.max_words`."""
    return build_eval_loader(
        folder,
        task=cfg.task,
        image_size=cfg.model.image_size,
        batch_size=cfg.eval.batch_size,
        rank=rank,
        world_size=world_size,
        num_workers=cfg.data.num_workers,
        video=cfg.video,
        num_frames=cfg.data.num_frames,
        max_words=_task(cfg.task).eval_max_words or cfg.data.max_words,
    )
