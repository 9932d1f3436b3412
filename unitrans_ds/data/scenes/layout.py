"""Scene layouts of the `scenes` world: what is where (and, in clips, how it moves). No words, no pixels.

A scene is a plain dict (JSON-able), drawn by `draw.render` and described by `texts`. Answers are balanced by
construction: every attribute is drawn uniformly and symmetrically (so the colour or shape a question asks
about is uniform), counts are drawn uniformly, and each yes/no fact is drawn true half of the time.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from .world import COLORS, DIRECTIONS, DOMAINS, MARKS, RELATIONS, SHAPES, SIZES

MIN_OBJECTS, MAX_OBJECTS = 2, 5  # per image; the count question's answers are two .. five, uniform
LANES = (0.2, 0.5, 0.8)  # clips: the rows (or columns) objects move along


def adjacent_pairs(objects: list[dict[str, Any]], relation: str) -> list[tuple[int, int]]:
    """(i, j) with object i `relation` object j: i is in the grid cell next to j in that direction."""
    dr, dc = RELATIONS[relation]
    cell = {(o["row"], o["col"]): k for k, o in enumerate(objects)}
    return [
        (cell[(o["row"] + dr, o["col"] + dc)], j)
        for j, o in enumerate(objects)
        if (o["row"] + dr, o["col"] + dc) in cell
    ]


def _attributes(rng: np.random.Generator, domain: str, color: str, shape: str) -> dict[str, Any]:
    base = DOMAINS[domain]["palette"][color]
    return {
        "color": color,
        "shape": shape,
        "rgb": [int(np.clip(v + rng.integers(-15, 16), 0, 255)) for v in base],
        "size": str(rng.choice(list(SIZES))),
        "mark": str(rng.choice(MARKS)),
        "angle": float(rng.uniform(-15, 15)),
    }


def _background(rng: np.random.Generator, domain: str) -> dict[str, Any]:
    if DOMAINS[domain]["background"] == "plain":
        return {"kind": "plain", "color": [int(v) for v in rng.integers(220, 256, size=3)]}
    base = int(rng.integers(35, 70))
    return {
        "kind": "textured",
        "color": [base, base + int(rng.integers(0, 12)), base + int(rng.integers(0, 16))],
        "period": int(rng.integers(8, 16)),
        "slope": int(rng.choice([-1, 1])),
        "noise_seed": int(rng.integers(2**31)),
    }


def _clutter(rng: np.random.Generator, domain: str) -> list[dict[str, Any]]:
    """Grey lines and dots that are not shapes (domain B): counting must learn to ignore them."""
    lo, hi = DOMAINS[domain]["clutter"]
    items = []
    for _ in range(int(rng.integers(lo, hi + 1)) if hi else 0):
        grey = int(rng.integers(90, 160))
        rgb = [grey, grey + int(rng.integers(-10, 11)), grey + int(rng.integers(-10, 11))]
        if rng.random() < 0.5:
            x, y = rng.uniform(0.05, 0.95, size=2)
            angle, length = rng.uniform(0, np.pi), rng.uniform(0.1, 0.3)
            dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
            items.append(
                {"kind": "line", "xy": [float(x - dx), float(y - dy), float(x + dx), float(y + dy)], "rgb": rgb}
            )
        else:
            items.append({"kind": "dot", "xy": [float(v) for v in rng.uniform(0.05, 0.95, size=2)], "rgb": rgb})
    return items


def _has_adjacent_pair(cells: list[int]) -> bool:
    taken = {divmod(c, 3) for c in cells}
    return any((r, c + 1) in taken or (r + 1, c) in taken for r, c in taken)


def image_scene(rng: np.random.Generator, domain: str, size: int) -> dict[str, Any]:
    """2 to 5 objects in distinct cells of a 3x3 grid, at least two of them adjacent (so a relation exists).

    `counted` is the colour the "how many <colour> shapes" question asks about; 0, 1 or 2 objects have it,
    uniformly. (colour, shape) is unique in a scene, so "the red circle" names one object.
    """
    n = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    while True:
        cells = sorted(int(c) for c in rng.choice(9, size=n, replace=False))
        if _has_adjacent_pair(cells):
            break
    counted = str(rng.choice(COLORS))
    k = int(rng.integers(0, 3))
    others = [c for c in COLORS if c != counted]
    colors = [counted] * k + [str(c) for c in rng.choice(others, size=n - k)]
    colors = [colors[int(i)] for i in rng.permutation(n)]
    objects: list[dict[str, Any]] = []
    for cell, color in zip(cells, colors):
        shape = str(rng.choice([s for s in SHAPES if (color, s) not in {(o["color"], o["shape"]) for o in objects}]))
        obj = _attributes(rng, domain, color, shape)
        row, col = divmod(cell, 3)
        jitter = rng.uniform(-0.02, 0.02, size=2)
        obj.update(row=row, col=col, x=(col + 0.5) / 3 + float(jitter[0]), y=(row + 0.5) / 3 + float(jitter[1]))
        objects.append(obj)
    if all(o["mark"] == "none" for o in objects):  # so "does the X have a ring" can be true half of the time
        objects[int(rng.integers(n))]["mark"] = str(rng.choice(MARKS[1:]))
    return {
        "world": "scenes",
        "kind": "image",
        "domain": domain,
        "size": size,
        "background": _background(rng, domain),
        "clutter": _clutter(rng, domain),
        "objects": objects,
        "counted": counted,
    }


def _path(axis: int, lane: float, a: float, b: float) -> tuple[list[float], list[float]]:
    """Start and end points moving from `a` to `b` along `axis` (0: x, 1: y) on `lane`."""
    return ([a, lane], [b, lane]) if axis == 0 else ([lane, a], [lane, b])


def clip_scene(rng: np.random.Generator, domain: str, size: int, frames: int) -> dict[str, Any]:
    """The mover M moves one way (uniform over 4) toward or away from the static reference R on its lane (half
    each); the other O moves the opposite way on another lane or stays put (half each); sometimes a static
    fourth object sits on the third lane. Colours and shapes are all distinct, so reversing the clip changes
    every order question's answer (the shape that moves left becomes O, or nothing)."""
    direction = str(rng.choice(DIRECTIONS))
    toward = bool(rng.random() < 0.5)
    axis = 0 if direction in ("left", "right") else 1
    forward = direction in ("right", "down")  # increasing coordinate
    n = 3 + int(rng.random() < 0.5)
    colors = [str(c) for c in rng.choice(COLORS, size=n, replace=False)]
    shapes = [str(s) for s in rng.choice(SHAPES, size=n, replace=False)]
    objects = [_attributes(rng, domain, c, s) for c, s in zip(colors, shapes)]
    # Lanes 0.3 apart and M stopping 0.3 from R keep two large shapes (radius 0.14) from ever touching.
    lanes = [LANES[int(i)] for i in rng.permutation(3)]
    # Along M's lane, in "forward" coordinates: toward puts R ahead of M's path, away puts it behind.
    shift = float(rng.uniform(-0.01, 0.01))
    m_from, m_to, r_at = (0.15, 0.55, 0.86) if toward else (0.45, 0.85, 0.14)
    m_from, m_to = m_from + shift, m_to + shift
    if not forward:
        m_from, m_to, r_at = 1 - m_from, 1 - m_to, 1 - r_at
    paths = [_path(axis, lanes[0], m_from, m_to), _path(axis, lanes[0], r_at, r_at)]
    if rng.random() < 0.5:  # O moves the opposite way
        a, b = (0.8, 0.2) if forward else (0.2, 0.8)
        paths.append(_path(axis, lanes[1], a, b))
    else:
        spot = float(rng.uniform(0.2, 0.8))
        paths.append(_path(axis, lanes[1], spot, spot))
    if n == 4:
        spot = float(rng.uniform(0.2, 0.8))
        paths.append(_path(axis, lanes[2], spot, spot))
    for obj, (start, end) in zip(objects, paths):
        obj.update(start=start, end=end)
    return {
        "world": "scenes",
        "kind": "video",
        "domain": domain,
        "size": size,
        "frames": frames,
        "background": _background(rng, domain),
        "clutter": _clutter(rng, domain),
        "objects": objects,
        "roles": {"mover": 0, "reference": 1, "other": 2},
    }


def reverse_clip(scene: dict[str, Any]) -> dict[str, Any]:
    """The same clip played backwards: every object's start and end swapped (frame k becomes frame F-1-k)."""
    out = copy.deepcopy(scene)
    for obj in out["objects"]:
        obj["start"], obj["end"] = obj["end"], obj["start"]
    return out


def direction_of(obj: dict[str, Any]) -> str:
    """Which way the object moves ("left", "right", "up", "down"), or "none"."""
    dx, dy = obj["end"][0] - obj["start"][0], obj["end"][1] - obj["start"][1]
    if abs(dx) < 1e-9 and abs(dy) < 1e-9:
        return "none"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def moves_toward(obj: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether `obj` ends nearer to `other` (where it ends) than it starts."""

    def dist(p: list[float], q: list[float]) -> float:
        return float(np.hypot(p[0] - q[0], p[1] - q[1]))

    return dist(obj["end"], other["end"]) < dist(obj["start"], other["start"])


__all__ = ["adjacent_pairs", "clip_scene", "direction_of", "image_scene", "moves_toward", "reverse_clip"]
