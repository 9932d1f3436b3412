"""The WebDataset pipeline stages behind `unitrans_ds.data.loaders`, written out one step at a time.

Training: shard source (resampled, or shuffled per epoch and split over rank x worker slots) -> tar reading
with a counting handler -> parse and check each sample -> sample shuffle buffer -> expand into one item per
caption (retrieval, captioning) or per question (VQA) -> pair shuffle buffer -> number the items -> skip what a
resumed run already consumed -> decode + transform -> batch -> this worker's share of the epoch's steps.
Evaluation: shards in manifest order split over slots -> tar reading -> parse -> one item per sample (per
question for VQA) -> decode -> batch (last one partial).

Every random choice comes from a `random.Random` seeded by (seed, epoch, rank, logical worker, ...), and
augmentation by (..., item number), so a pass is a pure function of those: `set_epoch` reshuffles
deterministically and a resume at (epoch, step) replays the rest of the epoch batch for batch.

Logical workers: DataLoader fetches batch k from physical worker k % W. A run resumed at step s must
continue with batch s, which the uninterrupted run took from worker s % W; so physical worker p plays logical
worker (p + s) % W, and everything (shards, seeds, share of steps) follows the logical id.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import get_worker_info

from unitrans_ds.data.skips import SkipCounter
from unitrans_ds.data.text import normalize_answer_text, pre_caption, pre_question

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
_FRAME_KEY = re.compile(r"^f(\d{3})\.(jpg|jpeg|png|webp)$")
#: what one item of a task is (`Task.item_unit`): a caption paired with its image, or a question with its answers
ITEM_UNITS = ("captions", "questions")
MAX_CONSECUTIVE_FAILURES = 1000


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts, identical in every process (unlike `hash`)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def stable_image_idx(sample_id: str) -> int:
    """A non-negative int64 per image or video id: equal on every rank, so same-image captions match."""
    digest = hashlib.blake2b(sample_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def frame_indices(stored: int, wanted: int, rng: random.Random | None) -> list[int]:
    """Pick `wanted` of `stored` frames: one per equal segment, random in it (rng) or its centre (rng=None).

    With fewer stored frames than wanted, segments are shorter than a frame and indices repeat.
    """
    if stored < 1 or wanted < 1:
        raise ValueError(f"need stored >= 1 and wanted >= 1 frames, got {stored} and {wanted}")
    out = []
    for i in range(wanted):
        start, end = i * stored / wanted, (i + 1) * stored / wanted
        if rng is None:
            idx = int((start + end) / 2)
        else:
            lo = int(start)
            hi = max(lo, int(np.ceil(end)) - 1)
            idx = rng.randint(lo, hi)
        out.append(min(idx, stored - 1))
    return out


class SharedEpoch:
    """Epoch and resume step shared with DataLoader worker processes (read at the start of each pass)."""

    def __init__(self, epoch: int = 0, start_step: int = 0) -> None:
        self._epoch = multiprocessing.Value("i", epoch)
        self._start = multiprocessing.Value("i", start_step)

    def set(self, epoch: int, start_step: int = 0) -> None:
        self._epoch.value = epoch
        self._start.value = start_step

    def get(self) -> tuple[int, int]:
        return self._epoch.value, self._start.value


@dataclass
class PassState:
    """Who this pass is: filled by the source stage when a worker starts a pass, read by later stages."""

    epoch: int = 0
    start_step: int = 0
    worker: int = 0
    num_workers: int = 1
    logical: int = 0


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


ROUND_END = "__round_end__"  # marker between rounds of shards: shuffle buffers flush on it, so rounds never mix


class TrainShardSource:
    """First training stage: an endless stream of rounds (lists of shard paths) for this rank and logical worker.

    Non-resampled: each round shuffles all shards with (seed, epoch, round), identically on every rank, and
    takes every `slots`-th one from this worker's slot, so round 0 reads each shard once over all workers and
    later rounds only top up workers that need more items for their share of steps. Resampled: a round is
    `len(shards)` shards drawn with replacement.
    """

    def __init__(
        self,
        shards: list[str],
        *,
        resampled: bool,
        seed: int,
        rank: int,
        world_size: int,
        shared: SharedEpoch,
        state: PassState,
        counter: SkipCounter,
    ) -> None:
        self.shards, self.resampled, self.seed = shards, resampled, seed
        self.rank, self.world_size = rank, world_size
        self.shared, self.state, self.counter = shared, state, counter

    def __call__(self) -> Iterator[list[str]]:
        st = self.state
        st.epoch, st.start_step = self.shared.get()
        st.worker, st.num_workers = _worker()
        st.logical = (st.worker + st.start_step) % st.num_workers
        self.counter.reset()
        return (self._round(st.epoch, st.logical, st.num_workers, rnd) for rnd in itertools.count())

    def _round(self, epoch: int, logical: int, num_workers: int, rnd: int) -> list[str]:
        if self.resampled:
            rng = random.Random(stable_seed(self.seed, epoch, self.rank, logical, rnd, "resample"))
            return [rng.choice(self.shards) for _ in self.shards]
        order = list(self.shards)
        random.Random(stable_seed(self.seed, epoch, rnd, "shards")).shuffle(order)
        slots = self.world_size * num_workers
        return order[self.rank * num_workers + logical :: slots]


class ReadRounds:
    """Tar reading (WebDataset's `tarfile_samples` with a counting handler), one round at a time, each round
    followed by `ROUND_END`."""

    def __init__(self, handler: Callable[[Exception], bool]) -> None:
        self.handler = handler

    def __call__(self, rounds: Iterable[list[str]]) -> Iterator[dict | str | ShardDone]:
        for urls in rounds:
            for u in urls:
                yield from wds.tarfile_samples([{"url": u}], handler=self.handler)
                yield ShardDone(u)
            yield ROUND_END


@dataclass(frozen=True)
class ShardDone:
    """Marker after the last sample of one shard read (training), for `ParseSamples` to count what was lost."""

    url: str


class EvalShardSource:
    """First evaluation stage: this rank and (physical) worker's shards, once, in manifest order."""

    def __init__(self, shards: list[str], *, rank: int, world_size: int, state: PassState, counter: SkipCounter):
        self.shards, self.rank, self.world_size = shards, rank, world_size
        self.state, self.counter = state, counter

    def __call__(self) -> Iterator[dict]:
        st = self.state
        st.worker, st.num_workers = _worker()
        st.logical = st.worker
        self.counter.reset()
        urls = self.shards[self.rank * st.num_workers + st.worker :: self.world_size * st.num_workers]
        return iter([{"url": u} for u in urls])


class ParseSamples:
    """Check a raw tar sample and parse its json: yields `{"key", "meta", "image"}` or `{"key", "meta", "frames"}`.

    Samples without json, without image (or frames in video mode), or with unreadable json are counted and
    dropped here, before they can take a place in a batch. `ROUND_END` passes through; a training round with
    no valid sample at all is an error (otherwise an unreadable shard set would loop forever).
    """

    def __init__(
        self,
        counter: SkipCounter,
        video: bool,
        expected: dict[str, tuple[int, int]] | None = None,
        pair_key: str = "captions",
    ) -> None:
        self.counter, self.video, self.expected, self.pair_key = counter, video, expected or {}, pair_key

    def _shard_done(self, url: str, got: list[int], kinds: dict[str, int]) -> None:
        """Compare one shard read with its manifest counts; the samples never read are `shard_read` losses."""
        samples, pairs = self.expected.get(url, (got[0], got[1]))
        unread = samples - got[0] - sum(kinds.values())
        if unread > 0:
            kinds = {**kinds, "shard_read": unread}
        if samples > got[0] or pairs > got[1]:
            self.counter.shard_read(url, samples - got[0], pairs - got[1], kinds)

    def __call__(self, samples: Iterable[dict | str]) -> Iterator[dict | str]:
        valid = 0
        got: dict[str, list[int]] = {}  # this read of each shard: [valid samples, their pairs]
        bad: dict[str, dict[str, int]] = {}  # this read of each shard: samples dropped here, by kind
        for raw in samples:
            if isinstance(raw, ShardDone):
                self._shard_done(raw.url, got.pop(raw.url, [0, 0]), bad.pop(raw.url, {}))
                continue
            if raw is ROUND_END:
                if valid == 0:
                    raise RuntimeError(
                        f"A whole round of this worker's shards gave no valid sample (skip counts: "
                        f"{self.counter.snapshot()}); check or rewrite the shards listed in the warnings above."
                    )
                valid = 0
                yield raw
                continue
            url = raw.get("__url__", "?")
            key = f"{url}:{raw.get('__key__', '?')}"
            out, kind, why = self._parse(raw, key)
            if out is None:
                self.counter.skip(kind, why)
                bad.setdefault(url, {})[kind] = bad.get(url, {}).get(kind, 0) + 1
                continue
            counts = got.setdefault(url, [0, 0])
            counts[0] += 1
            counts[1] += len(out["meta"].get(self.pair_key, []))
            valid += 1
            yield out

    def _parse(self, raw: dict, key: str) -> tuple[dict | None, str, str]:
        """(sample, "", "") or (None, skip kind, detail)."""
        if "json" not in raw:
            return None, "incomplete_sample", f"{key} has no json (files: {sorted(raw)})"
        try:
            meta = json.loads(raw["json"])
        except (ValueError, UnicodeDecodeError) as exn:
            return None, "bad_json", f"{key}: {exn}"
        out = {"key": key, "meta": meta}
        if self.video:
            frames = sorted((int(m.group(1)), k) for k in raw if (m := _FRAME_KEY.match(k)))
            if not frames:
                return None, "incomplete_sample", f"{key} has no f000.jpg... frames"
            out["frames"] = [raw[k] for _, k in frames]
        else:
            image_key = next((k for k in IMAGE_KEYS if k in raw), None)
            if image_key is None:
                return None, "incomplete_sample", f"{key} has no image (files: {sorted(raw)})"
            out["image"] = raw[image_key]
        return out, "", ""


class BufferShuffle:
    """Shuffle through a buffer of `size` items with an rng seeded per (seed, epoch, rank, worker, name)."""

    def __init__(self, size: int, name: str, seed: int, rank: int, state: PassState) -> None:
        self.size, self.name, self.seed, self.rank, self.state = size, name, seed, rank, state

    def __call__(self, items: Iterable[Any]) -> Iterator[Any]:
        st = self.state
        rng = random.Random(stable_seed(self.seed, st.epoch, self.rank, st.logical, self.name))
        buf: list = []
        for item in items:
            if item is ROUND_END:
                rng.shuffle(buf)
                yield from buf
                buf = []
                yield item
                continue
            if len(buf) < self.size:
                buf.append(item)
                continue
            i = rng.randrange(len(buf))
            buf[i], item = item, buf[i]
            yield item
        rng.shuffle(buf)
        yield from buf


class ExpandItems:
    """One sample -> its training or evaluation items (`{"key", "meta", "image"|"frames", ...text fields}`).

    `unit` is the task's item (`Task.item_unit`). `captions`: in training one item per caption (`text`,
    `image_idx`), in evaluation one item per sample with all its captions. `questions` (train and eval): one item
    per question.
    """

    def __init__(self, unit: str, train: bool, max_words: int, max_question_words: int) -> None:
        if unit not in ITEM_UNITS:
            raise ValueError(f"unit must be one of {ITEM_UNITS}, got {unit!r}")
        self.questions, self.train = unit == "questions", train
        self.max_words, self.max_question_words = max_words, max_question_words

    def __call__(self, samples: Iterable[dict]) -> Iterator[dict]:
        for s in samples:
            if s is ROUND_END:
                yield s
                continue
            meta = s["meta"]
            if self.questions:
                for q in meta.get("questions", []):
                    yield {
                        **s,
                        "question": pre_question(q["question"], self.max_question_words),
                        "answers": [normalize_answer_text(a) for a in q.get("answers", [])],
                        "question_id": q["question_id"],
                        "answer_type": q.get("answer_type"),
                    }
            elif self.train:
                idx = stable_image_idx(str(meta["id"]))
                for caption in meta.get("captions", []):
                    yield {**s, "text": pre_caption(caption, self.max_words), "image_idx": idx}
            else:
                yield {**s, "captions": [pre_caption(c, self.max_words) for c in meta.get("captions", [])]}


class Number:
    """Drop round markers and attach each item's position in this worker's stream (seeds its augmentation)."""

    def __call__(self, items: Iterable[dict | str]) -> Iterator[dict]:
        i = 0
        for item in items:
            if item is ROUND_END:
                continue
            item["number"] = i
            i += 1
            yield item


class SkipConsumed:
    """Drop the items a resumed run already trained on, before any decoding (cheap)."""

    def __init__(self, micro_batch: int, state: PassState) -> None:
        self.micro_batch, self.state = micro_batch, state

    def __call__(self, items: Iterable[dict]) -> Iterator[dict]:
        st = self.state
        done = batches_before(st.start_step, st.logical, st.num_workers)
        it = iter(items)
        for _ in range(done * self.micro_batch):
            if next(it, None) is None:
                return
        yield from it


def batches_before(step: int, logical: int, num_workers: int) -> int:
    """How many of the first `step` batches of an epoch logical worker `logical` produced (k % W == logical)."""
    return step // num_workers + (1 if logical < step % num_workers else 0)


class DecodeItems:
    """Decode and transform the image (or the chosen frames) of each item into uint8 `pixels`.

    Train items get `random.Random(seed, epoch, rank, worker, number)`, shared by all frames of a clip so
    that a clip is cropped, flipped and augmented as one. Undecodable bytes are counted and the item dropped;
    `MAX_CONSECUTIVE_FAILURES` in a row is an error (a training stream would otherwise loop forever over
    shards whose images all fail).
    """

    def __init__(
        self,
        transform: Callable,
        counter: SkipCounter,
        state: PassState,
        *,
        train: bool,
        seed: int,
        rank: int,
        num_frames: int,
        pair_key: str = "captions",
    ) -> None:
        self.transform, self.counter, self.state = transform, counter, state
        self.train, self.seed, self.rank, self.num_frames = train, seed, rank, num_frames
        self.pair_key = pair_key

    def _rng(self, item: dict) -> random.Random | None:
        if not self.train:
            return None
        st = self.state
        return random.Random(stable_seed(self.seed, st.epoch, self.rank, st.logical, item["number"]))

    def __call__(self, items: Iterable[dict]) -> Iterator[dict]:
        failures = 0
        for item in items:
            try:
                if "frames" in item:
                    pick_rng = self._rng(item)
                    picks = frame_indices(len(item["frames"]), self.num_frames, pick_rng)
                    seed = pick_rng.random() if pick_rng is not None else 0.0
                    pixels = np.stack(
                        [self.transform(item["frames"][i], random.Random(seed) if self.train else None) for i in picks]
                    )
                    times = item["meta"].get("frame_times") or [0.0] * len(item["frames"])
                    item["frame_times"] = [float(times[i]) for i in picks]
                else:
                    pixels = self.transform(item["image"], self._rng(item))
            except Exception as exn:  # PIL raises many types on garbage bytes; all mean "cannot decode"
                self.counter.skip("image_decode", f"{item['key']}: {exn!r}"[:500])
                if self.train:  # a sample's every pair fails alike: count the sample once, with all its pairs
                    shard = item["key"].rsplit(":", 1)[0]
                    self.counter.decode_failed(shard, item["key"], len(item["meta"].get(self.pair_key, [])))
                failures += 1
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    raise RuntimeError(
                        f"{failures} images in a row could not be decoded (last: {item['key']}: {exn!r}); the "
                        "shards look broken. Check them, or rewrite them with `python -m unitrans_ds.make_shards`."
                    ) from exn
                continue
            failures = 0
            out = {k: v for k, v in item.items() if k not in ("image", "frames")}
            out["pixels"] = pixels
            yield out


class TakeShare:
    """Stop after this logical worker's share of the epoch's steps (what `with_epoch` does, but exact).

    `steps` batches per epoch over W workers: worker l makes those with k % W == l, minus those already
    consumed before a resume.
    """

    def __init__(self, steps: int, state: PassState) -> None:
        self.steps, self.state = steps, state

    def __call__(self, batches: Iterable[dict]) -> Iterator[dict]:
        st = self.state
        share = batches_before(self.steps, st.logical, st.num_workers)
        done = batches_before(min(st.start_step, self.steps), st.logical, st.num_workers)
        it = iter(batches)
        for _ in range(share - done):
            batch = next(it, None)
            if batch is None:
                return
            yield batch


_LIST_FIELDS = {
    "captions_train": ("text",),
    "questions_train": ("question", "answers", "question_id"),
    "captions_eval": ("captions",),
    "questions_eval": ("question", "question_id", "answers", "answer_type"),
}


def stack_pixels(arrays: list[np.ndarray]) -> torch.Tensor:
    """Stack equal-shaped uint8 arrays into one tensor; in a DataLoader worker, straight into shared memory.

    A worker's batch goes to the main process through shared memory: a tensor outside it is copied into a new
    segment when the batch is sent. Stacking into a segment at once saves that copy of every batch, as torch's
    `default_collate` does for its own stacks (our batches are dicts of mixed fields, so it is not used)."""
    shape = (len(arrays), *arrays[0].shape)
    if get_worker_info() is None:
        return torch.from_numpy(np.stack(arrays))
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)))
    out = torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
    np.stack(arrays, out=out.numpy())
    return out


class Collate:
    """List of decoded items -> the batch dict the tasks consume (see `unitrans_ds.data.loaders`), except that
    `pixel_values` is still uint8 channels-last: moving uint8 out of a worker costs a seventh of what moving
    the float batch does (measured 0.35 vs 2.3 ms of worker CPU per 384 px image)."""

    def __init__(self, unit: str, train: bool, counter: SkipCounter, state: PassState) -> None:
        self.fields = _LIST_FIELDS[f"{unit}_{'train' if train else 'eval'}"]
        self.captions, self.train, self.counter, self.state = unit == "captions", train, counter, state

    def __call__(self, items: list[dict]) -> dict:
        # uint8 [B, (T,) H, W, 3]; the loader normalizes it in the consuming process (`normalize_batch`).
        batch: dict[str, Any] = {"pixel_values": stack_pixels([it["pixels"] for it in items])}
        for name in self.fields:
            batch[name] = [it[name] for it in items]
        if self.train and self.captions:
            batch["image_idx"] = torch.tensor([it["image_idx"] for it in items], dtype=torch.int64)
        if not self.train:
            batch["id"] = [str(it["meta"].get("id")) for it in items]
            if self.captions:
                batch["image_id"] = [it["meta"].get("image_id") for it in items]
        if "frame_times" in items[0]:
            batch["frame_times"] = torch.tensor([it["frame_times"] for it in items], dtype=torch.float32)
        batch["skipped"] = self.counter.snapshot()
        if self.train:
            batch["lost"] = self.counter.ledger_snapshot()
        batch["worker_id"] = self.state.worker
        return batch
