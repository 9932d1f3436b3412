"""Parsers of native annotation formats, one per `--format` of make_shards.

`parse(format_name, request)` returns the `SourceItem`s (one per image or video, deterministic order, unique
keys). Malformed files raise `AnnotationError` naming the file, the record and the field.
"""

from __future__ import annotations

from collections.abc import Callable

from .captions import parse_coco_captions, parse_karpathy
from .didemo import parse_didemo
from .msrvtt import parse_msrvtt, parse_msrvtt_qa
from .records import AnnotationError, ParseRequest, ShardError, SourceItem, assign_unique_keys, sanitize_key
from .vqa import parse_vqav2


def _shapes(req: ParseRequest) -> list[SourceItem]:
    from ..shapes import build_items  # the synthetic set pulls in PIL drawing only when asked for

    return build_items(req)


def _scenes(req: ParseRequest) -> list[SourceItem]:
    from ..scenes import build_items  # as for shapes: drawing code only when asked for

    return build_items(req)


PARSERS: dict[str, Callable[[ParseRequest], list[SourceItem]]] = {
    "coco-karpathy": lambda req: parse_karpathy(req, "coco"),
    "coco-captions": parse_coco_captions,
    "flickr30k-karpathy": lambda req: parse_karpathy(req, "flickr30k"),
    "vqav2": parse_vqav2,
    "msrvtt": parse_msrvtt,
    "msrvtt-qa": parse_msrvtt_qa,
    "didemo": parse_didemo,
    "shapes": _shapes,
    "scenes": _scenes,
}

FORMATS = tuple(PARSERS)
# Formats that draw their samples from a seed (--domain, --num_samples, --task_set) instead of reading media.
SYNTHETIC_FORMATS = ("shapes", "scenes")


def parse(format_name: str, req: ParseRequest) -> list[SourceItem]:
    """Items of `req`'s annotation file in `format_name`, with unique WebDataset keys."""
    if format_name not in PARSERS:
        raise ShardError(f"unknown --format {format_name!r}; choose one of {', '.join(FORMATS)}")
    items = PARSERS[format_name](req)
    assign_unique_keys(items)
    return items


__all__ = [
    "FORMATS",
    "PARSERS",
    "SYNTHETIC_FORMATS",
    "AnnotationError",
    "ParseRequest",
    "ShardError",
    "SourceItem",
    "parse",
    "sanitize_key",
]
