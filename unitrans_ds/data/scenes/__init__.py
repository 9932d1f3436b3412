"""`scenes`: the successor of the `shapes` world, built so a transfer benchmark can measure something.

Images hold 2 to 5 objects on a 3x3 grid, each with a colour, shape, size and surface mark (none, a ring, a
cross); captions from a grammar describe all of them, their positions and relations, so near-duplicate
captions are rare; eight questions per image (count, count of a colour, colour of the shape next to X, shape
at a position, is there a ..., where is ..., size, mark) have balanced answers, so no constant answer scores
well. Clips show a mover going toward or away from a reference, and another shape that moves the opposite way
or stays put; their order questions flip when the clip is played backwards, so one frame cannot answer them.

Domains a and b share every concept and word; b changes the look (palette, hatched outlined objects, a dark
textured background, clutter, white marks) and the phrasing (relations, openings). See shards/README.md.

Same design as `shapes`: `build_items` (make_shards' `scenes` format) draws every layout up front from
`numpy.random.default_rng([seed, domain, split, task, index])`, so sample i depends on nothing else (not the
worker count); `render_jpegs` (in the workers) turns a layout into JPEG bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..formats.records import ParseRequest, ShardError, SourceItem, new_meta
from ..shapes import clip_times
from .draw import render, render_jpegs
from .layout import clip_scene, image_scene, reverse_clip
from .texts import Plan, clip_captions, clip_plans, image_captions, image_plans, questions
from .world import DOMAINS, SPLITS, TASK_SETS


@dataclass
class Sample:
    """One image or clip: its layout, captions, question plans and question records (answers drawn)."""

    scene: dict[str, Any]
    captions: list[str]
    plans: list[Plan]
    questions: list[dict[str, Any]]


def make_sample(
    seed: int, domain: str, split: str, task_set: str, index: int, size: int, frames: int, sid: str
) -> Sample:
    """Sample `index` of a split, from its own generator `[seed, domain, split, task_set, index]` alone."""
    keys = [seed, list(DOMAINS).index(domain), SPLITS.index(split), TASK_SETS.index(task_set), index]
    rng = np.random.default_rng(keys)
    if task_set == "image":
        scene = image_scene(rng, domain, size)
        captions, plans = image_captions(rng, scene), image_plans(rng, scene)
    else:
        scene = clip_scene(rng, domain, size, frames)
        captions, plans = clip_captions(rng, scene), clip_plans(rng, scene)
    return Sample(scene, captions, plans, questions(rng, scene, plans, sid))


def build_items(req: ParseRequest) -> list[SourceItem]:
    """`req.num_samples` items of domain `req.domain` for `req.split`; `req.task_set` is image or video."""
    if req.domain not in DOMAINS:
        raise ShardError(f"--domain must be one of {', '.join(DOMAINS)} for --format scenes, got {req.domain!r}")
    if not req.num_samples or req.num_samples < 1:
        raise ShardError("--num_samples must be a positive number for --format scenes")
    if req.task_set not in TASK_SETS:
        raise ShardError(f"--task_set must be image or video, got {req.task_set!r}")
    if req.task_set == "video" and req.frames < 2:
        raise ShardError(f"--frames must be at least 2 for --format scenes clips (motion needs two), got {req.frames}")
    items = []
    for i in range(req.num_samples):
        sid = f"scenes-{req.domain}-{req.task_set}-{req.split}-{i:06d}"
        media_field = "image" if req.task_set == "image" else "video"
        media = f"scenes/{req.domain}/{req.task_set}/{req.split}/{i:06d}" + (".jpg" if media_field == "image" else "")
        meta = new_meta(sid, media_field, media, f"scenes-{req.domain}", req.split, i, domain=req.domain)
        sample = make_sample(req.seed, req.domain, req.split, req.task_set, i, req.image_size, req.frames, sid)
        meta["captions"], meta["questions"] = sample.captions, sample.questions
        items.append(SourceItem(sid, req.task_set, None, meta, sample.scene))
    return items


__all__ = ["Sample", "build_items", "clip_times", "make_sample", "render", "render_jpegs", "reverse_clip"]
