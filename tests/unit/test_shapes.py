"""The synthetic `shapes` set: deterministic, two distinct domains, texts that match the pixels, and a
vocabulary the demo tokenizer spells as whole words."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from unitrans_ds.data.formats import ParseRequest, parse
from unitrans_ds.data.shapes import render, render_jpegs
from unitrans_ds.make_shards import main
from unitrans_ds.models.tiny import demo_tokenizer


def items(domain: str, task_set: str = "image", n: int = 60, seed: int = 0, split: str = "train", frames: int = 8):
    return parse("shapes", ParseRequest(split=split, domain=domain, num_samples=n, task_set=task_set, seed=seed, frames=frames))  # fmt: skip


def texts(item) -> list[str]:
    meta = item.meta
    return meta["captions"] + [q["question"] for q in meta["questions"]] + [a for q in meta["questions"] for a in q["answers"]]  # fmt: skip


def majority(question: dict) -> str:
    return Counter(question["answers"]).most_common(1)[0][0]


PALETTE = {  # what the colour words look like, to name a region's colour
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30),
    "orange": (245, 140, 20), "purple": (150, 60, 200), "pink": (250, 120, 190), "cyan": (30, 210, 220),
}  # fmt: skip


def colour_name(image: Image.Image, region: np.ndarray) -> str:
    rgb = np.median(np.asarray(image.convert("RGB")).astype(int)[region[:, 0], region[:, 1]], axis=0)
    return min(PALETTE, key=lambda name: float(np.sum((np.array(PALETTE[name]) - rgb) ** 2)))


def blobs(image: Image.Image) -> list[np.ndarray]:
    """Pixel coordinates of each saturated connected region (the shapes; backgrounds are grey)."""
    a = np.asarray(image.convert("RGB")).astype(int)
    mask = (a.max(axis=2) - a.min(axis=2)) > 70
    seen = np.zeros_like(mask)
    regions = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        stack, pixels = [(y, x)], []
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            pixels.append((cy, cx))
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        if len(pixels) >= 8:  # ignore JPEG-size specks
            regions.append(np.array(pixels))
    return regions


def test_deterministic_from_seed_and_split():
    a1, a2 = items("a", seed=5), items("a", seed=5)
    assert [i.meta for i in a1] == [i.meta for i in a2]
    assert [render_jpegs(i.scene) for i in a1[:5]] == [render_jpegs(i.scene) for i in a2[:5]]
    other_seed = items("a", seed=6)
    other_split = items("a", seed=5, split="val")
    assert sum(x.meta["captions"] == y.meta["captions"] for x, y in zip(a1, other_seed)) < 10
    assert sum(x.meta["captions"] == y.meta["captions"] for x, y in zip(a1, other_split)) < 10


@pytest.mark.parametrize("task_set", ["image", "video"])
def test_every_word_is_a_whole_token(task_set):
    tok = demo_tokenizer()
    for domain in "ab":
        for item in items(domain, task_set, n=80):
            for text in texts(item):
                pieces = tok.tokenize(text)
                assert "[UNK]" not in pieces and not any(p.startswith("##") for p in pieces), text
                assert len(pieces) == len(text.split()), text


def test_domains_use_disjoint_colour_and_shape_words():
    words = {d: Counter(w for it in items(d, n=100) for t in it.meta["captions"] for w in t.split()) for d in "ab"}
    colours_shapes_a = {"red", "green", "blue", "yellow", "circle", "square", "triangle"}
    colours_shapes_b = {"orange", "purple", "pink", "cyan", "star", "cross", "diamond", "hexagon"}
    assert colours_shapes_a <= set(words["a"]) and not colours_shapes_b & set(words["a"])
    assert colours_shapes_b <= set(words["b"]) and not colours_shapes_a & set(words["b"])
    mean_bg = {d: np.mean([np.asarray(render(it.scene)[0]).mean() for it in items(d, n=10)]) for d in "ab"}
    assert mean_bg["a"] > 180 > 110 > mean_bg["b"]  # light plain vs dark striped backgrounds


@pytest.mark.parametrize("domain", ["a", "b"])
def test_image_questions_agree_with_pixels(domain):
    """Majority answers match what the rendered image shows: shape count and the colour of the named shape."""
    for item in items(domain, n=40):
        image = Image.open(io.BytesIO(render_jpegs(item.scene)[0]))
        assert image.size == (64, 64)
        qs = {q["question_type"]: q for q in item.meta["questions"]}
        assert len(item.meta["questions"]) == 5 and all(len(q["answers"]) == 10 for q in item.meta["questions"])
        assert {q["answer_type"] for q in item.meta["questions"]} == {"number", "other", "yes/no"}
        regions = blobs(image)
        assert majority(qs["how many"]) == ["zero", "one", "two", "three"][len(regions)], item.meta["id"]
        named = Counter(w for w in item.meta["captions"][0].split() if w in PALETTE)
        assert Counter(colour_name(image, r) for r in regions) == named, item.meta["captions"][0]


def test_retrieval_is_learnable_not_trivial():
    """Most images have a caption set no other image has; some single captions are shared (not trivial)."""
    for domain in "ab":
        batch = items(domain, n=200)
        sets = Counter(tuple(it.meta["captions"]) for it in batch)
        unique = sum(1 for it in batch if sets[tuple(it.meta["captions"])] == 1)
        assert unique / len(batch) > 0.9
        singles = Counter(c for it in batch for c in it.meta["captions"])
        assert any(n > 1 for n in singles.values())
        assert all(len(it.meta["captions"]) >= 3 for it in batch)


@pytest.mark.parametrize("domain", ["a", "b"])
def test_clip_motion_matches_the_answer(domain):
    """For one-shape clips, the shape's centroid moves the way the majority answer says."""
    checked = 0
    for item in items(domain, "video", n=40, frames=8):
        if len(item.scene["objects"]) != 1:
            continue
        frames = [Image.open(io.BytesIO(b)) for b in render_jpegs(item.scene)]
        assert len(frames) == 8
        first, last = (blobs(f)[0].mean(axis=0) for f in (frames[0], frames[-1]))
        dy, dx = last - first
        seen = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        way = next(q for q in item.meta["questions"] if q["question_type"] == "which way does the")
        assert majority(way) == seen, item.meta["captions"]
        assert seen in item.meta["captions"][0]
        checked += 1
    assert checked >= 5


def test_shapes_video_shards(tmp_path):
    out = tmp_path / "v"
    rc = main(["--format", "shapes", "--domain", "a", "--task-set", "video", "--num-samples", "6", "--frames", "8",
               "--shard-size", "3", "--split", "val", "--out", str(out), "--workers", "1", "--no-progress"])  # fmt: skip
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["frames"] == 8 and len(manifest["shards"]) == 2
    assert manifest["tasks"] == ["retrieval", "captioning", "vqa"]
    with tarfile.open(out / "shard-000000.tar") as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("shapes-a-video-val-000000.json").read())
    assert [n for n in names if n.startswith("shapes-a-video-val-000000.")] == sorted(
        [f"shapes-a-video-val-000000.f{k:03d}.jpg" for k in range(8)] + ["shapes-a-video-val-000000.json"]
    )
    assert meta["num_frames"] == 8 and meta["frame_times"] == sorted(meta["frame_times"])
    assert (meta["width"], meta["height"], meta["domain"], meta["split"]) == (64, 64, "a", "val")
    assert meta["duration"] > meta["frame_times"][-1]
