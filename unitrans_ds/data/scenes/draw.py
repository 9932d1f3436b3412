"""Drawing `scenes` layouts: the look of each domain (flat vs hatched and outlined objects, plain vs textured
background, clutter, mark colour). Everything random about the look was drawn into the layout, so a scene
renders to the same pixels in any process."""

from __future__ import annotations

import functools
import io
import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .world import DOMAINS, SIZES

# Small objects keep their colour only without chroma subsampling: at the JPEG default (4:2:0) a 6-pixel
# pink star with a black ring comes out purple. Full-resolution colour at quality 90 costs ~1.9x the bytes (measured).
JPEG_QUALITY = 90
JPEG_SUBSAMPLING = 0  # 4:4:4

# Where a mark sits inside each outline (centre offset and radius, in units of the object's radius): inside the
# inner part of a star or triangle, not across its points.
MARK_FIT = {"triangle": (0.2, 0.32), "star": (0.0, 0.3), "diamond": (0.0, 0.32), "heart": (0.05, 0.36)}


def _outline(shape: str) -> list[tuple[float, float]]:
    """Unit-radius outline of a polygonal shape, centred at the origin, y down."""
    if shape == "square":
        return [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    if shape == "triangle":
        return [(0.0, -1.0), (0.95, 0.75), (-0.95, 0.75)]
    if shape == "diamond":
        return [(0.0, -1.0), (0.72, 0.0), (0.0, 1.0), (-0.72, 0.0)]
    if shape == "star":
        return [
            ((1.0 if k % 2 == 0 else 0.45) * math.sin(math.pi / 5 * k), -(1.0 if k % 2 == 0 else 0.45) * math.cos(math.pi / 5 * k))
            for k in range(10)
        ]  # fmt: skip
    if shape == "heart":
        ts = [2 * math.pi * k / 32 for k in range(32)]
        pts = [
            (16 * math.sin(t) ** 3, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)))
            for t in ts
        ]
        return [(x / 16.5, (y + 2.5) / 15) for x, y in pts]
    raise ValueError(f"unknown shape {shape!r}")


def _rotated(
    cx: float, cy: float, r: float, points: list[tuple[float, float]], angle: float
) -> list[tuple[float, float]]:
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in points]


def _background(scene: dict[str, Any], side: int) -> Image.Image:
    bg = scene["background"]
    if bg["kind"] == "plain":
        return Image.new("RGB", (side, side), tuple(bg["color"]))
    yy, xx = np.mgrid[0:side, 0:side]
    period = max(2, bg["period"] * side // 64)
    stripes = ((xx + bg["slope"] * yy) // period) % 2
    noise = np.random.default_rng(bg["noise_seed"]).normal(0.0, 7.0, size=(side, side, 1))
    pixels = np.array(bg["color"], dtype=float)[None, None, :] + 18.0 * stripes[..., None] + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _clutter(draw: ImageDraw.ImageDraw, items: list[dict[str, Any]], side: int) -> None:
    for item in items:
        if item["kind"] == "line":
            draw.line([v * side for v in item["xy"]], fill=tuple(item["rgb"]), width=max(1, side // 64))
        else:
            x, y = item["xy"][0] * side, item["xy"][1] * side
            r = side / 64 * 1.5
            draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(item["rgb"]))


@functools.lru_cache(maxsize=4)
def _hatch(side: int) -> np.ndarray:
    """(side, side, 1) of 0/1: diagonal bands about a third of a small object wide."""
    yy, xx = np.mgrid[0:side, 0:side]
    return (((xx - yy) // max(2, side // 21)) % 2)[..., None].astype(float)


def _mask(obj: dict[str, Any], cx: float, cy: float, r: float, side: int) -> Image.Image:
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    if obj["shape"] == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_rotated(cx, cy, r, _outline(obj["shape"]), obj["angle"]), fill=255)
    return mask


def _draw_object(image: Image.Image, obj: dict[str, Any], x: float, y: float, style: str, mark_rgb: tuple) -> None:
    side = image.size[0]
    cx, cy, r = x * side, y * side, SIZES[obj["size"]] * side
    mask = _mask(obj, cx, cy, r, side)
    rgb = np.array(obj["rgb"], dtype=float)
    if style == "hatched":  # diagonal hatching in a darker tone of the colour, and a dark outline
        box = mask.getbbox() or (0, 0, 1, 1)  # fill only the object's box: 4x fewer pixels to compute
        hatch = _hatch(side)[box[1] : box[3], box[0] : box[2]]
        fill = rgb[None, None, :] * (1.0 - 0.28 * hatch)
        image.paste(Image.fromarray(fill.astype(np.uint8)), box, mask.crop(box))
        _edge(image, obj, cx, cy, r, tuple(int(v * 0.35) for v in obj["rgb"]))
    else:
        image.paste(tuple(obj["rgb"]), (0, 0), mask)
    _mark(ImageDraw.Draw(image), obj, cx, cy, r, mark_rgb)


def _edge(image: Image.Image, obj: dict[str, Any], cx: float, cy: float, r: float, rgb: tuple) -> None:
    draw, width = ImageDraw.Draw(image), max(1, image.size[0] // 64)
    if obj["shape"] == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=rgb, width=width)
    else:
        points = _rotated(cx, cy, r, _outline(obj["shape"]), obj["angle"])
        draw.line(points + points[:1], fill=rgb, width=width, joint="curve")


def _mark(draw: ImageDraw.ImageDraw, obj: dict[str, Any], cx: float, cy: float, r: float, rgb: tuple) -> None:
    if obj["mark"] == "none":
        return
    offset, radius = MARK_FIT.get(obj["shape"], (0.0, 0.45))
    mx, my, mr = cx, cy + offset * r, radius * r
    width = max(2, round(0.16 * r))
    if obj["mark"] == "ring":
        draw.ellipse([mx - mr, my - mr, mx + mr, my + mr], outline=rgb, width=width)
    else:
        draw.line([mx - mr, my, mx + mr, my], fill=rgb, width=width)
        draw.line([mx, my - mr, mx, my + mr], fill=rgb, width=width)


def position(obj: dict[str, Any], scene: dict[str, Any], k: int) -> tuple[float, float]:
    """Where the object is in frame `k` (a fraction of the side): an image's fixed point, or a clip's point
    moved linearly from start (first frame) to end (last frame)."""
    if scene["kind"] == "image":
        return obj["x"], obj["y"]
    f = k / max(1, scene["frames"] - 1)
    return (
        obj["start"][0] + f * (obj["end"][0] - obj["start"][0]),
        obj["start"][1] + f * (obj["end"][1] - obj["start"][1]),
    )


def render(scene: dict[str, Any]) -> list[Image.Image]:
    """The scene's frames (one for an image) as RGB images of `scene["size"]` pixels a side.

    Drawn at twice the size and halved, so edges are anti-aliased like a photo's rather than jagged.
    """
    side = scene["size"] * 2
    look = DOMAINS[scene["domain"]]
    backdrop = _background(scene, side)
    _clutter(ImageDraw.Draw(backdrop), scene["clutter"], side)
    frames = []
    for k in range(scene.get("frames", 1)):
        image = backdrop.copy()
        for obj in scene["objects"]:
            x, y = position(obj, scene, k)
            _draw_object(image, obj, x, y, look["style"], tuple(look["mark_rgb"]))
        frames.append(image.reduce(2))
    return frames


def render_jpegs(scene: dict[str, Any]) -> list[bytes]:
    """`render(scene)` encoded as JPEGs (quality 90, no chroma subsampling, optimized Huffman tables)."""
    out = []
    for image in render(scene):
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING, optimize=True)
        out.append(buf.getvalue())
    return out
