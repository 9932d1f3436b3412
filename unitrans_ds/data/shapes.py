"""`shapes`: a synthetic image / video-clip data set of coloured shapes, deterministic from a seed.

Images hold 1 to 3 shapes on a 3x3 grid; clips show 1 or 2 shapes that move left, right, up or down (or, for
the second shape, stay put). Every sample carries several captions (for retrieval and captioning) and
questions with 10 answers each (for VQA), so one set of shards serves all tasks.

Two domains a model must adapt between:
- **a**: red / green / blue / yellow circles, squares and triangles on a plain light background;
- **b**: orange / purple / pink / cyan stars, crosses, diamonds and hexagons on a dark striped background.
The colour and shape words of the two domains are disjoint, so a model trained on A has never been asked
about B's words and has never seen its look.

`build_items` (called by make_shards' `shapes` format) draws every scene's parameters up front from
`numpy.random.default_rng([seed, domain, split, task, index])`, so sample i does not depend on the worker count
or on any other sample; `render_jpegs` (called in the workers) turns a scene into JPEG bytes.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .formats.records import ParseRequest, ShardError, SourceItem, new_meta

DOMAINS: dict[str, dict[str, Any]] = {
    "a": {
        "colors": {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)},
        "shapes": ("circle", "square", "triangle"),
        "background": "plain",
    },
    "b": {
        "colors": {"orange": (245, 140, 20), "purple": (150, 60, 200), "pink": (250, 120, 190), "cyan": (30, 210, 220)},
        "shapes": ("star", "cross", "diamond", "hexagon"),
        "background": "stripes",
    },
}
SPLITS = ("train", "val", "test")
SIZES = {"small": 0.09, "large": 0.14}  # shape radius as a fraction of the image side
NUMBERS = ("zero", "one", "two", "three", "four")
COLS = ("left", "middle", "right")
ROWS = ("top", "middle", "bottom")
DIRECTIONS = ("left", "right", "up", "down")
CLIP_FPS = 8.0  # clips are short: F frames at 8 frames per second
JPEG_QUALITY = 75  # the demo shards must stay small; 64 px shapes survive it well


def build_items(req: ParseRequest) -> list[SourceItem]:
    """`req.num_samples` items of domain `req.domain` for `req.split`; `req.task_set` is image or video."""
    if req.domain not in DOMAINS:
        raise ShardError(f"--domain must be one of {', '.join(DOMAINS)} for --format shapes, got {req.domain!r}")
    if not req.num_samples or req.num_samples < 1:
        raise ShardError("--num_samples must be a positive number for --format shapes")
    if req.task_set not in ("image", "video"):
        raise ShardError(f"--task_set must be image or video, got {req.task_set!r}")
    domain_idx, split_idx = list(DOMAINS).index(req.domain), SPLITS.index(req.split)
    task_idx = 0 if req.task_set == "image" else 1
    items = []
    for i in range(req.num_samples):
        rng = np.random.default_rng([req.seed, domain_idx, split_idx, task_idx, i])
        sid = f"shapes-{req.domain}-{req.task_set}-{req.split}-{i:06d}"
        media_field = "image" if req.task_set == "image" else "video"
        media = f"shapes/{req.domain}/{req.task_set}/{req.split}/{i:06d}" + (".jpg" if task_idx == 0 else "")
        meta = new_meta(sid, media_field, media, f"shapes-{req.domain}", req.split, i, domain=req.domain)
        if req.task_set == "image":
            scene = _image_scene(rng, req.domain, req.image_size)
            meta["captions"], meta["questions"] = _image_texts(rng, scene, req.domain, sid)
        else:
            scene = _clip_scene(rng, req.domain, req.image_size, req.frames)
            meta["captions"], meta["questions"] = _clip_texts(rng, scene, req.domain, sid)
        items.append(SourceItem(sid, req.task_set, None, meta, scene))
    return items


# ---------------------------------------------------------------- scenes


def _background(rng: np.random.Generator, domain: str) -> dict[str, Any]:
    if DOMAINS[domain]["background"] == "plain":
        return {"kind": "plain", "color": [int(v) for v in rng.integers(225, 256, size=3)]}
    base = int(rng.integers(35, 70))
    return {"kind": "stripes", "color": [base, base, base + 10], "period": int(rng.integers(10, 16))}


def _shape(rng: np.random.Generator, domain: str) -> dict[str, Any]:
    colors = DOMAINS[domain]["colors"]
    color = str(rng.choice(list(colors)))
    rgb = [int(np.clip(v + rng.integers(-20, 21), 0, 255)) for v in colors[color]]
    return {
        "shape": str(rng.choice(DOMAINS[domain]["shapes"])),
        "color": color,
        "rgb": rgb,
        "size": str(rng.choice(list(SIZES))),
        "angle": float(rng.uniform(-15, 15)),
    }


def _distinct_shape(rng: np.random.Generator, domain: str, taken: list[dict[str, Any]]) -> dict[str, Any]:
    """A shape whose (colour, shape) differs from every shape in `taken`, so "the red circle" is one shape."""
    while True:
        obj = _shape(rng, domain)
        if all((obj["color"], obj["shape"]) != (t["color"], t["shape"]) for t in taken):
            return obj


def _image_scene(rng: np.random.Generator, domain: str, size: int) -> dict[str, Any]:
    n = int(rng.integers(1, 4))
    cells = rng.choice(9, size=n, replace=False)
    objects: list[dict[str, Any]] = []
    for cell in sorted(int(c) for c in cells):
        obj = _distinct_shape(rng, domain, objects)
        row, col = divmod(cell, 3)
        jitter = rng.uniform(-0.02, 0.02, size=2)
        obj.update(row=row, col=col, x=(col + 0.5) / 3 + float(jitter[0]), y=(row + 0.5) / 3 + float(jitter[1]))
        objects.append(obj)
    return {"kind": "image", "size": size, "background": _background(rng, domain), "objects": objects}


def _clip_scene(rng: np.random.Generator, domain: str, size: int, frames: int) -> dict[str, Any]:
    n = int(rng.integers(1, 3))
    objects = []
    lanes = list(rng.permutation(3))
    for j in range(n):
        obj = _distinct_shape(rng, domain, objects)
        # The second shape may stay put, so "how many shapes are moving" has more than one answer; when it
        # moves, it moves another way, so "the shape that moves left" names one shape.
        others = [d for d in DIRECTIONS if j == 0 or d != objects[0]["direction"]]
        direction = str(rng.choice(others)) if j == 0 or rng.random() < 0.6 else "none"
        lane = (int(lanes[j]) + 0.5) / 3
        if direction in ("left", "right"):
            a, b = (0.2, 0.8) if direction == "right" else (0.8, 0.2)
            start, end = (a, lane), (b, lane)
        elif direction in ("up", "down"):
            a, b = (0.2, 0.8) if direction == "down" else (0.8, 0.2)
            start, end = (lane, a), (lane, b)
        else:
            spot = (float(rng.uniform(0.25, 0.75)), lane)
            start = end = spot
        obj.update(direction=direction, start=list(start), end=list(end))
        objects.append(obj)
    return {"kind": "video", "size": size, "frames": frames, "background": _background(rng, domain), "objects": objects}


# ---------------------------------------------------------------- texts


def _answers(rng: np.random.Generator, truth: str, pool: list[str]) -> list[str]:
    """Ten answers as ten annotators give them: mostly the truth, sometimes a plausible other answer."""
    answers = [truth] * 10
    others = [p for p in pool if p != truth]
    for slot in rng.choice(10, size=int(rng.choice([0, 0, 0, 1, 1, 2])), replace=False):
        answers[int(slot)] = str(rng.choice(others))
    return answers


def _question(qid: str, text: str, answers: list[str], answer_type: str, question_type: str) -> dict[str, Any]:
    return {
        "question_id": qid,
        "question": text,
        "answers": answers,
        "answer_type": answer_type,
        "question_type": question_type,
    }


def _where(obj: dict[str, Any]) -> str:
    row, col = ROWS[obj["row"]], COLS[obj["col"]]
    if row == "middle" and col == "middle":
        return "in the center"
    if row == "middle":
        return f"on the {col}"
    if col == "middle":
        return f"at the {row}"
    return f"at the {row} {col}"


def _name(obj: dict[str, Any], size: bool = False) -> str:
    return f"{obj['size']} {obj['color']} {obj['shape']}" if size else f"{obj['color']} {obj['shape']}"


def _a(phrase: str) -> str:
    """The phrase with its indefinite article ("an orange star")."""
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _relation(a: dict[str, Any], b: dict[str, Any]) -> str:
    if a["col"] != b["col"]:
        return "to the left of" if a["col"] < b["col"] else "to the right of"
    return "above" if a["row"] < b["row"] else "below"


def _image_texts(rng: np.random.Generator, scene: dict[str, Any], domain: str, sid: str) -> tuple[list, list]:
    objs = sorted(scene["objects"], key=lambda o: (o["col"], o["row"]))
    n = len(objs)
    one = objs[int(rng.integers(n))]
    captions = [
        " and ".join(_a(_name(o, size=True)) for o in objs),
        f"{_a(_name(one))} {_where(one)}",
        f"there {'is' if n == 1 else 'are'} {NUMBERS[n]} {'shape' if n == 1 else 'shapes'} , "
        + " and ".join(_a(o["shape"]) for o in objs),
    ]
    if n > 1:
        a, b = (objs[i] for i in rng.choice(n, size=2, replace=False))
        captions.append(f"{_a(_name(a))} {_relation(a, b)} {_a(_name(b))}")
    else:
        captions.append(f"a picture of {_a(_name(one, size=True))}")

    colors, shapes = list(DOMAINS[domain]["colors"]), list(DOMAINS[domain]["shapes"])
    positions = ["left", "right", "top", "bottom", "center"]
    q = []
    q.append(_question(f"{sid}-q0", "how many shapes are there ?", _answers(rng, NUMBERS[n], list(NUMBERS[1:4])), "number", "how many"))  # fmt: skip
    q.append(_question(f"{sid}-q1", f"what color is the {one['shape']} {_where(one)} ?", _answers(rng, one["color"], colors), "other", "what color is the"))  # fmt: skip
    q.append(_question(f"{sid}-q2", f"what shape is the {one['color']} object {_where(one)} ?", _answers(rng, one["shape"], shapes), "other", "what shape is the"))  # fmt: skip
    where = COLS[one["col"]] if one["col"] != 1 else (ROWS[one["row"]] if one["row"] != 1 else "center")
    q.append(_question(f"{sid}-q3", f"where is the {_name(one)} ?", _answers(rng, where, positions), "other", "where is the"))  # fmt: skip
    present = {(o["color"], o["shape"]) for o in objs}
    if rng.random() < 0.5:
        color, shape, truth = one["color"], one["shape"], "yes"
    else:
        absent = [(c, s) for c in colors for s in shapes if (c, s) not in present]
        color, shape = absent[int(rng.integers(len(absent)))]
        truth = "no"
    q.append(_question(f"{sid}-q4", f"is there {_a(color + ' ' + shape)} ?", _answers(rng, truth, ["yes", "no"]), "yes/no", "is there a"))  # fmt: skip
    return captions, q


def _motion(obj: dict[str, Any]) -> str:
    if obj["direction"] == "none":
        return "does not move"
    return f"moves {obj['direction']}"


def _path(obj: dict[str, Any]) -> str:
    ends = {"right": ("left", "right"), "left": ("right", "left"), "down": ("top", "bottom"), "up": ("bottom", "top")}
    a, b = ends[obj["direction"]]
    return f"the {obj['color']} {obj['shape']} moves from the {a} to the {b}"


def _clip_texts(rng: np.random.Generator, scene: dict[str, Any], domain: str, sid: str) -> tuple[list, list]:
    objs = scene["objects"]
    mover = objs[0]
    captions = [
        " and ".join(f"{_a(_name(o, size=True))} {_motion(o)}" for o in objs),
        f"a video of {_a(_name(mover))} moving {mover['direction']}",
        _path(mover),
    ]
    colors, shapes = list(DOMAINS[domain]["colors"]), list(DOMAINS[domain]["shapes"])
    moving = sum(o["direction"] != "none" for o in objs)
    q = []
    q.append(_question(f"{sid}-q0", f"which way does the {_name(mover)} move ?", _answers(rng, mover["direction"], list(DIRECTIONS)), "other", "which way does the"))  # fmt: skip
    q.append(_question(f"{sid}-q1", "how many shapes are moving ?", _answers(rng, NUMBERS[moving], list(NUMBERS[:3])), "number", "how many"))  # fmt: skip
    q.append(_question(f"{sid}-q2", f"what color is the shape that moves {mover['direction']} ?", _answers(rng, mover["color"], colors), "other", "what color is the"))  # fmt: skip
    q.append(_question(f"{sid}-q3", f"what shape moves {mover['direction']} ?", _answers(rng, mover["shape"], shapes), "other", "what shape"))  # fmt: skip
    asked = mover["direction"] if rng.random() < 0.5 else str(rng.choice([d for d in DIRECTIONS if d != mover["direction"]]))  # fmt: skip
    truth = "yes" if asked == mover["direction"] else "no"
    q.append(_question(f"{sid}-q4", f"does the {_name(mover)} move {asked} ?", _answers(rng, truth, ["yes", "no"]), "yes/no", "does the"))  # fmt: skip
    return captions, q


# ---------------------------------------------------------------- drawing


def _paint_background(draw: ImageDraw.ImageDraw, bg: dict[str, Any], side: int) -> None:
    draw.rectangle([0, 0, side, side], fill=tuple(bg["color"]))
    if bg["kind"] == "stripes":
        period = bg["period"] * side // 64 or 1
        shade = tuple(min(255, c + 25) for c in bg["color"])
        for k in range(-side, side, period * 2):
            draw.polygon([(k, 0), (k + period, 0), (k + period + side, side), (k + side, side)], fill=shade)


def _polygon(
    cx: float, cy: float, r: float, points: list[tuple[float, float]], angle: float
) -> list[tuple[float, float]]:
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in points]


def _outline(shape: str) -> list[tuple[float, float]]:
    """Unit-radius outline of a polygonal shape, centred at the origin, y down."""
    if shape == "square":
        return [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    if shape == "triangle":
        return [(0.0, -1.0), (0.9, 0.75), (-0.9, 0.75)]
    if shape == "diamond":
        return [(0.0, -1.0), (0.7, 0.0), (0.0, 1.0), (-0.7, 0.0)]
    if shape == "hexagon":
        return [(math.cos(math.pi / 3 * k), math.sin(math.pi / 3 * k)) for k in range(6)]
    if shape == "star":
        return [
            ((1.0 if k % 2 == 0 else 0.45) * math.sin(math.pi / 5 * k), -(1.0 if k % 2 == 0 else 0.45) * math.cos(math.pi / 5 * k))
            for k in range(10)
        ]  # fmt: skip
    if shape == "cross":
        a, b = 0.33, 1.0
        return [
            (-a, -b),
            (a, -b),
            (a, -a),
            (b, -a),
            (b, a),
            (a, a),
            (a, b),
            (-a, b),
            (-a, a),
            (-b, a),
            (-b, -a),
            (-a, -a),
        ]
    raise ValueError(f"unknown shape {shape!r}")


def _draw_object(draw: ImageDraw.ImageDraw, obj: dict[str, Any], x: float, y: float, side: int) -> None:
    cx, cy, r = x * side, y * side, SIZES[obj["size"]] * side
    if obj["shape"] == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(obj["rgb"]))
    else:
        draw.polygon(_polygon(cx, cy, r, _outline(obj["shape"]), obj["angle"]), fill=tuple(obj["rgb"]))


def render(scene: dict[str, Any]) -> list[Image.Image]:
    """The scene's frames (one for an image) as RGB images of `scene["size"]` pixels a side.

    Drawn at twice the size and halved, so edges are anti-aliased like a photo's rather than jagged.
    """
    side = scene["size"] * 2
    count = scene.get("frames", 1)
    frames = []
    for k in range(count):
        image = Image.new("RGB", (side, side))
        draw = ImageDraw.Draw(image)
        _paint_background(draw, scene["background"], side)
        for obj in scene["objects"]:
            if scene["kind"] == "image":
                x, y = obj["x"], obj["y"]
            else:
                f = k / max(1, count - 1)
                x = obj["start"][0] + f * (obj["end"][0] - obj["start"][0])
                y = obj["start"][1] + f * (obj["end"][1] - obj["start"][1])
            _draw_object(draw, obj, x, y, side)
        frames.append(image.reduce(2))
    return frames


def clip_times(frames: int) -> tuple[list[float], float]:
    """Frame timestamps (seconds, segment centres at `CLIP_FPS`) and the clip duration."""
    duration = frames / CLIP_FPS
    return [round((k + 0.5) / CLIP_FPS, 6) for k in range(frames)], duration


def render_jpegs(scene: dict[str, Any]) -> list[bytes]:
    """`render(scene)` encoded as small JPEGs (quality 75, optimized Huffman tables), one per frame."""
    out = []
    for image in render(scene):
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
        out.append(buf.getvalue())
    return out
