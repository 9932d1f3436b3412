"""Test helper: write small image or video shards in the project's shard schema with `webdataset.TarWriter`.

Independent of the project's shard writer on purpose: the loader tests check the loaders against the schema
(the contract), not against another module's output. Images are small random-colour JPEGs so each sample is
distinguishable; captions and questions name their sample, so a test can tell what came out.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image


def jpeg_bytes(rng: random.Random, size: tuple[int, int] = (48, 40), quality: int = 90) -> bytes:
    """A random smooth-ish colour image, JPEG-encoded."""
    w, h = size
    base = np.array([rng.randrange(256) for _ in range(3)], dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = base + 40 * np.sin(xx[..., None] / (3 + rng.random() * 5) + np.arange(3)) + yy[..., None] / h * 30
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def image_sample(i: int, rng: random.Random, captions: int = 2, questions: int = 1, size=(48, 40)) -> dict:
    """One image sample: `{"__key__", "jpg", "json"}` with `captions` captions and `questions` questions."""
    sid = f"img{i:05d}"
    meta = {
        "id": sid,
        "image": f"{sid}.jpg",
        "dataset": "testgen",
        "split": "train",
        "domain": "image",
        "captions": [f"A Photo: of image {i}, caption {j}!" for j in range(captions)],
        "questions": [
            {
                "question_id": i * 100 + q,
                "question": f"What is in image {i}, question {q}?",
                "answers": [f"Answer {i}-{q}"] * 10,
                "answer_type": "other",
                "question_type": "what is",
            }
            for q in range(questions)
        ],
        "image_id": i,
    }
    return {"__key__": sid, "jpg": jpeg_bytes(rng, size), "json": json.dumps(meta).encode()}


def video_sample(i: int, rng: random.Random, frames: int = 6, captions: int = 2, size=(40, 32)) -> dict:
    """One video sample with `frames` stored frames f000.jpg.. at 0.5 s spacing."""
    sid = f"vid{i:05d}"
    meta = {
        "id": sid,
        "video": f"{sid}.mp4",
        "dataset": "testgen",
        "split": "train",
        "domain": "video",
        "captions": [f"video {i} caption {j}" for j in range(captions)],
        "questions": [
            {
                "question_id": i * 100,
                "question": f"what happens in video {i}",
                "answers": [f"thing {i}"],
                "answer_type": "other",
                "question_type": "what",
            }
        ],
        "image_id": i,
        "frame_times": [0.5 * f for f in range(frames)],
        "duration": 0.5 * frames,
        "num_frames": frames,
    }
    out = {"__key__": sid, "json": json.dumps(meta).encode()}
    for f in range(frames):
        out[f"f{f:03d}.jpg"] = jpeg_bytes(rng, size)
    return out


def write_shards(folder: Path, samples: list[dict], per_shard: int, frames: int | None = None) -> dict:
    """Write `samples` into `folder/shard-%06d.tar` (`per_shard` each) plus manifest.json; returns the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for s, start in enumerate(range(0, len(samples), per_shard)):
        chunk = samples[start : start + per_shard]
        name = f"shard-{s:06d}.tar"
        with wds.TarWriter(str(folder / name)) as sink:
            for sample in chunk:
                sink.write(sample)
        metas = [json.loads(x["json"]) for x in chunk]
        data = (folder / name).read_bytes()
        entries.append(
            {
                "name": name,
                "samples": len(chunk),
                "captions": sum(len(m["captions"]) for m in metas),
                "questions": sum(len(m["questions"]) for m in metas),
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data),
            }
        )
    manifest = {
        "format": "unitrans_ds-shards",
        "split": "train",
        "tasks": ["retrieval", "captioning", "vqa"],
        "total_samples": sum(e["samples"] for e in entries),
        "num_captions": sum(e["captions"] for e in entries),
        "num_questions": sum(e["questions"] for e in entries),
        "frames": frames,
        "shards": entries,
        "skipped": {},
        "args": {"generator": "tests/helpers/shardgen.py"},
        "version": 1,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def make_image_shards(
    folder: Path, n: int, per_shard: int, captions: int = 2, questions: int = 1, seed: int = 0, size=(48, 40)
) -> dict:
    rng = random.Random(seed)
    return write_shards(folder, [image_sample(i, rng, captions, questions, size) for i in range(n)], per_shard)


def make_video_shards(folder: Path, n: int, per_shard: int, frames: int = 6, seed: int = 0) -> dict:
    rng = random.Random(seed)
    return write_shards(folder, [video_sample(i, rng, frames) for i in range(n)], per_shard, frames=frames)
