"""Captions and questions of the `scenes` world, read off a layout (`layout.py`).

Captions come from a small grammar and describe several objects with several attributes each, so two test
images rarely share a caption or differ in one word (`stats.near_duplicate_rates` measures it). Questions are
planned first (`Plan`: the type, the text and what it asks about) and answered by `truth(scene, plan)` from the
layout alone, so tests can ask the same question of a changed scene (a reversed clip) and compare.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .layout import adjacent_pairs, direction_of, moves_toward
from .world import (
    ANSWER_NUMBERS,
    COLORS,
    DIRECTIONS,
    DOMAINS,
    MARKS,
    NUMBERS,
    OPPOSITE,
    SHAPES,
    SIZES,
    YES_NO,
    a,
    name,
    where,
    where_answer,
)

IMAGE_QUESTION_TYPES = ("count", "count color", "color of related", "shape at", "is there", "where", "size", "mark")
CLIP_QUESTION_TYPES = ("direction", "toward", "color of mover", "shape of mover", "does it move", "count moving")
# Clip questions whose answer flips when the clip is played backwards: the frames of a reversed clip are the
# same set of pictures, so no single frame (nor any bag of frames) can answer them.
ORDER_QUESTION_TYPES = ("direction", "toward", "color of mover", "shape of mover", "does it move")
REVERSE = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below", "below": "above"}
WHERE_ANSWERS = tuple(where_answer(r, c) for r in range(3) for c in range(3))
CLIP_PREFIXES = {
    "a": {"": 0.6, "in this video ,": 0.4},
    "b": {"": 0.2, "in this video ,": 0.2, "in this clip ,": 0.6},
}


@dataclass(frozen=True)
class Plan:
    """One question before it is answered: `qtype` (one of the *_QUESTION_TYPES), the text, the answer type,
    the answers an annotator might confuse it with (`pool`), and what it is about (`args`)."""

    qtype: str
    text: str
    answer_type: str
    pool: tuple[str, ...]
    args: dict[str, Any] = field(default_factory=dict)


def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _prefixed(prefix: str, text: str) -> str:
    return f"{prefix} {text}" if prefix else text


def _answers(rng: np.random.Generator, truth: str, pool: tuple[str, ...]) -> list[str]:
    """Ten answers as ten annotators give them: the truth, and in 3 questions of 10 one plausible other answer.

    Rarer slips than `shapes` makes: a stray answer earns a constant guess partial VQA credit (a third per
    match), which lifts the constant-answer baseline of yes/no questions well above 50%."""
    answers = [truth] * 10
    if rng.random() < 0.3:
        answers[int(rng.integers(10))] = str(rng.choice([p for p in pool if p != truth]))
    return answers


def questions(rng: np.random.Generator, scene: dict[str, Any], plans: list[Plan], sid: str) -> list[dict[str, Any]]:
    """The sample's question records (schema of shards/README.md), answers drawn after the plans."""
    out = []
    for k, plan in enumerate(plans):
        out.append(
            {
                "question_id": f"{sid}-q{k}",
                "question": plan.text,
                "answers": _answers(rng, truth(scene, plan), plan.pool),
                "answer_type": plan.answer_type,
                "question_type": plan.qtype,
            }
        )
    return out


# ---------------------------------------------------------------- images


def _relation_pair(rng: np.random.Generator, scene: dict[str, Any], avoid: tuple[int, int] | None = None):
    """(relation, i, j) with object i `relation` object j, preferring a pair other than `avoid`; the domain
    decides how often it is left/right rather than above/below."""
    horizontal = rng.random() < DOMAINS[scene["domain"]]["horizontal_relation_p"]
    axes = [("to the left of", "to the right of"), ("above", "below")]
    groups = [
        [(rel, i, j) for rel in rels for i, j in adjacent_pairs(scene["objects"], rel)]
        for rels in (axes if horizontal else axes[::-1])
    ]
    fresh = [[p for p in group if avoid is None or {p[1], p[2]} != set(avoid)] for group in groups]
    for group in fresh + groups:
        if group:
            return group[int(rng.integers(len(group)))]
    raise ValueError("a scene without adjacent objects")  # image_scene never makes one


def _and_list(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else " , ".join(phrases[:-1]) + " and " + phrases[-1]


#: what each of `image_captions`' four captions says, in their order
IMAGE_CAPTION_KINDS = ("count and listing", "three positions", "one relation", "second relation")


def image_captions(rng: np.random.Generator, scene: dict[str, Any]) -> list[str]:
    """Four captions of at most 30 words (the loaders' default `max_words`), each naming several objects with
    several attributes, so one rarely repeats in a split: the count and every object (with size and mark when
    there are at most three); three objects with their positions; one relation with full attributes; another
    relation (or, with one adjacent pair only, the same pair the other way round)."""
    objs = sorted(scene["objects"], key=lambda o: (o["row"], o["col"]))
    prefixes = DOMAINS[scene["domain"]]["prefixes"]
    full = len(objs) <= 3
    listing = _and_list([a(name(o, size=full, mark=full)) for o in objs])
    placed = sorted(int(k) for k in rng.choice(len(objs), size=min(3, len(objs)), replace=False))
    positions = _and_list([f"{a(name(objs[k]))} {where(objs[k]['row'], objs[k]['col'])}" for k in placed])
    o = scene["objects"]
    rel, i, j = _relation_pair(rng, scene)
    rel2, i2, j2 = _relation_pair(rng, scene, avoid=(i, j))
    rel3, i3, j3 = _relation_pair(rng, scene, avoid=(i2, j2))
    if {i2, j2} == {i, j}:  # only one adjacent pair: say it the other way round, with sizes and marks
        two = f"{a(name(o[j], True, True))} {REVERSE[rel]} {a(name(o[i], True, True))}"
    else:  # two relations, so the caption pins down more than two objects (a short one repeats across images)
        two = f"{a(name(o[i2]))} {rel2} {a(name(o[j2]))} and {a(name(o[i3]))} {rel3} {a(name(o[j3]))}"
    return [
        _prefixed(_pick(rng, prefixes), f"{NUMBERS[len(objs)]} shapes : {listing}"),
        _prefixed(_pick(rng, prefixes), positions),
        _prefixed(_pick(rng, prefixes), f"{a(name(o[i], True, True))} {rel} {a(name(o[j], True, True))}"),
        _prefixed(_pick(rng, prefixes), two),
    ]


def image_plans(rng: np.random.Generator, scene: dict[str, Any]) -> list[Plan]:
    """One question of each image type. Yes/no facts are asked true half of the time."""
    objs = scene["objects"]
    n = len(objs)

    def any_obj() -> int:
        return int(rng.integers(n))

    rel, i, j = _relation_pair(rng, scene)
    at = any_obj()
    plans = [
        Plan("count", "how many shapes are there ?", "number", ANSWER_NUMBERS[1:]),
        Plan(
            "count color",
            f"how many {scene['counted']} shapes are there ?",
            "number",
            ANSWER_NUMBERS[:4],
            {"color": scene["counted"]},
        ),
        Plan(
            "color of related", f"what color is the shape {rel} the {name(objs[j])} ?", "other", COLORS, {"object": i}
        ),
        Plan("shape at", f"what shape is {where(objs[at]['row'], objs[at]['col'])} ?", "other", SHAPES, {"object": at}),
    ]
    present = {(o["color"], o["shape"]) for o in objs}
    if rng.random() < 0.5:
        k = any_obj()
        color, shape = objs[k]["color"], objs[k]["shape"]
    else:
        # A hard "no": the colour of one object with the shape of another, when such a mix is absent.
        mixes = [(p["color"], q["shape"]) for p in objs for q in objs if (p["color"], q["shape"]) not in present]
        if not mixes:
            mixes = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
        color, shape = mixes[int(rng.integers(len(mixes)))]
    plans.append(
        Plan("is there", f"is there {a(color + ' ' + shape)} ?", "yes/no", YES_NO, {"color": color, "shape": shape})
    )
    k = any_obj()
    plans.append(Plan("where", f"where is the {name(objs[k])} ?", "other", WHERE_ANSWERS, {"object": k}))
    k = any_obj()
    size = objs[k]["size"] if rng.random() < 0.5 else next(s for s in SIZES if s != objs[k]["size"])
    plans.append(Plan("size", f"is the {name(objs[k])} {size} ?", "yes/no", YES_NO, {"object": k, "size": size}))
    if rng.random() < 0.5:
        marked = [m for m, o in enumerate(objs) if o["mark"] != "none"]
        k = marked[int(rng.integers(len(marked)))]
        mark = objs[k]["mark"]
    else:
        k = any_obj()
        mark = str(rng.choice([m for m in MARKS[1:] if m != objs[k]["mark"]]))
    plans.append(
        Plan("mark", f"does the {name(objs[k])} have a {mark} ?", "yes/no", YES_NO, {"object": k, "mark": mark})
    )
    return plans


def _image_truth(scene: dict[str, Any], plan: Plan) -> str:
    objs, args = scene["objects"], plan.args
    obj = objs[args["object"]] if "object" in args else None
    if plan.qtype == "count":
        return ANSWER_NUMBERS[len(objs)]
    if plan.qtype == "count color":
        return ANSWER_NUMBERS[sum(o["color"] == args["color"] for o in objs)]
    if plan.qtype == "color of related":
        return obj["color"]
    if plan.qtype == "shape at":
        return obj["shape"]
    if plan.qtype == "is there":
        return YES_NO[0] if any((o["color"], o["shape"]) == (args["color"], args["shape"]) for o in objs) else YES_NO[1]
    if plan.qtype == "where":
        return where_answer(obj["row"], obj["col"])
    if plan.qtype == "size":
        return YES_NO[0] if obj["size"] == args["size"] else YES_NO[1]
    if plan.qtype == "mark":
        return YES_NO[0] if obj["mark"] == args["mark"] else YES_NO[1]
    raise ValueError(f"unknown image question type {plan.qtype!r}")


# ---------------------------------------------------------------- clips


def _ends(obj: dict[str, Any]) -> tuple[str, str]:
    axis = {"left": "right", "right": "left", "up": "bottom", "down": "top"}
    d = direction_of(obj)
    return axis[d], {"left": "left", "right": "right", "up": "top", "down": "bottom"}[d]


def _motion(obj: dict[str, Any]) -> str:
    d = direction_of(obj)
    return "does not move" if d == "none" else f"moves {d}"


def clip_captions(rng: np.random.Generator, scene: dict[str, Any]) -> list[str]:
    """Three captions of at most 30 words, each true only of the clip played forwards; each names two objects
    with three or more attributes (fewer would repeat across a test split)."""
    roles, objs = scene["roles"], scene["objects"]
    m, r, o = objs[roles["mover"]], objs[roles["reference"]], objs[roles["other"]]
    prefixes = CLIP_PREFIXES[scene["domain"]]
    toward = "toward" if moves_toward(m, r) else "away from"
    start, end = _ends(m)
    approach = f"{a(name(m, size=True, mark=True))} moves {direction_of(m)} {toward} {a(name(r, size=True, mark=True))}"
    motions = _and_list([f"{a(name(x, mark=True))} {_motion(x)}" for x in (m, o)])
    path = f"the {name(m, size=True)} moves from the {start} to the {end} , the {name(o, size=True, mark=True)} {_motion(o)}"
    return [_prefixed(_pick(rng, prefixes), text) for text in (approach, motions, path)]


def clip_plans(rng: np.random.Generator, scene: dict[str, Any]) -> list[Plan]:
    """One question of each clip type, about the mover M (and the reference R)."""
    roles, objs = scene["roles"], scene["objects"]
    m, r = objs[roles["mover"]], objs[roles["reference"]]
    d = direction_of(m)
    asked = d if rng.random() < 0.5 else OPPOSITE[d]
    return [
        Plan("direction", f"which way does the {name(m)} move ?", "other", DIRECTIONS, {"object": roles["mover"]}),
        Plan(
            "toward",
            f"does the {name(m)} move toward the {name(r)} ?",
            "yes/no",
            YES_NO,
            {"object": roles["mover"], "other": roles["reference"]},
        ),
        Plan("color of mover", f"what color is the shape that moves {d} ?", "other", COLORS, {"direction": d}),
        Plan("shape of mover", f"what shape moves {d} ?", "other", SHAPES, {"direction": d}),
        Plan(
            "does it move",
            f"does the {name(m)} move {asked} ?",
            "yes/no",
            YES_NO,
            {"object": roles["mover"], "direction": asked},
        ),
        Plan("count moving", "how many shapes are moving ?", "number", ANSWER_NUMBERS[:4]),
    ]


def _clip_truth(scene: dict[str, Any], plan: Plan) -> str | None:
    """The answer, or None when the question has none in this scene (nothing moves that way)."""
    objs, args = scene["objects"], plan.args
    if plan.qtype == "direction":
        return direction_of(objs[args["object"]])
    if plan.qtype == "toward":
        return YES_NO[0] if moves_toward(objs[args["object"]], objs[args["other"]]) else YES_NO[1]
    if plan.qtype in ("color of mover", "shape of mover"):
        movers = [o for o in objs if direction_of(o) == args["direction"]]
        if len(movers) != 1:
            return None
        return movers[0]["color" if plan.qtype == "color of mover" else "shape"]
    if plan.qtype == "does it move":
        return YES_NO[0] if direction_of(objs[args["object"]]) == args["direction"] else YES_NO[1]
    if plan.qtype == "count moving":
        return ANSWER_NUMBERS[sum(direction_of(o) != "none" for o in objs)]
    raise ValueError(f"unknown clip question type {plan.qtype!r}")


def truth(scene: dict[str, Any], plan: Plan) -> str | None:
    """The true answer to `plan` in `scene` (None: no answer, only possible for a changed clip)."""
    return _image_truth(scene, plan) if scene["kind"] == "image" else _clip_truth(scene, plan)
