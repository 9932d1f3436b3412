"""Throughput of make_shards: images/s on COCO-sized JPEGs, and frames/s on a real clip repeated.

    .venv/bin/python benchmarks/bench_make_shards.py [--images 200] [--clips 8] [--workers 1 2]

Images: generated 640x480 JPEGs (quality 90, ~COCO's file sizes) in a temporary folder, converted as
coco-karpathy, once keeping the original bytes and once with `--max_side 384` (decode + resize + re-encode).
Video: the real 10.4 s, 426x240 clip (tests/fixtures/make_shards/video/flipping_a_pancake.mkv) copied `--clips`
times and converted as MSR-VTT with 16 frames; frames/s counts stored frames, and decoded frames/s all frames
decoded (the clip's header has no frame count, so each clip is decoded twice: a count pass and a pick pass).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import add_json_arg, machine_line, write_results  # (run as a script: its folder is on the path)
from PIL import Image
from tqdm import tqdm

from unitrans_ds.cli import ArgumentParser
from unitrans_ds.data.shard_writer import ShardJob, make_shards

CLIP = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "make_shards" / "video" / "flipping_a_pancake.mkv"


def make_images(root: Path, count: int) -> Path:
    """`count` 640x480 photo-like JPEGs (smooth colour fields plus noise) and a Karpathy train JSON."""
    rng = np.random.default_rng(0)
    (root / "train2014").mkdir(parents=True)
    rows = []
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    for i in tqdm(range(count), desc="generating images"):
        phase = rng.uniform(0, 6, size=3)
        base = 128 + 90 * np.sin(xx[..., None] / rng.uniform(20, 80) + yy[..., None] / rng.uniform(20, 80) + phase)
        pixels = np.clip(base + rng.normal(0, 12, size=base.shape), 0, 255).astype(np.uint8)
        name = f"train2014/COCO_train2014_{i:012d}.jpg"
        Image.fromarray(pixels).save(root / name, quality=90)
        rows.append({"image": name, "caption": f"picture {i}", "image_id": f"coco_{i}"})
    ann = root / "karpathy_train.json"
    ann.write_text(json.dumps(rows))
    return ann


def make_clips(root: Path, count: int) -> Path:
    (root / "videos").mkdir(parents=True)
    lines = []
    for i in range(count):
        shutil.copy(CLIP, root / "videos" / f"video{i}.mp4")
        lines.append(json.dumps({"caption": "someone flips a pancake", "clip_name": f"video{i}"}))
    ann = root / "msrvtt_train.jsonl"
    ann.write_text("\n".join(lines))
    return ann


def timed(job: ShardJob) -> tuple[float, dict]:
    start = time.perf_counter()
    manifest = make_shards(job)
    return time.perf_counter() - start, manifest


def main() -> None:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200, help="COCO-sized JPEGs to convert (default 200).")
    p.add_argument("--clips", type=int, default=8, help="Copies of the real clip to convert (default 8).")
    p.add_argument("--frames", type=int, default=16, help="Frames stored per clip (default 16).")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Worker counts to measure.")
    add_json_arg(p, __file__)
    args = p.parse_args()
    result: dict = {"machine": machine_line(), "args": {k: str(v) for k, v in vars(args).items()}, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ann = make_images(root / "coco", args.images)
        mean_kb = np.mean([f.stat().st_size for f in (root / "coco" / "train2014").iterdir()]) / 1024
        print(f"images: {args.images} x 640x480 JPEG, mean {mean_kb:.0f} KB")
        clips = make_clips(root / "msrvtt", args.clips)
        for workers in args.workers:
            for max_side in (None, 384):
                out = root / f"img_w{workers}_{max_side}"
                job = ShardJob("coco-karpathy", out, annotations=ann, media_root=root / "coco", shard_size=100,
                               max_side=max_side, workers=workers, progress=False)  # fmt: skip
                seconds, manifest = timed(job)
                what = "original bytes" if max_side is None else f"--max_side {max_side}"
                print(f"images  workers={workers} {what:>16}: {manifest['total_samples'] / seconds:7.1f} images/s")
                result["runs"].append(
                    {"kind": "images", "workers": workers, "max_side": max_side,
                     "images_per_s": manifest["total_samples"] / seconds}
                )  # fmt: skip
            out = root / f"vid_w{workers}"
            job = ShardJob("msrvtt", out, annotations=clips, media_root=root / "msrvtt" / "videos", shard_size=100,
                           frames=args.frames, workers=workers, progress=False)  # fmt: skip
            seconds, manifest = timed(job)
            stored = manifest["total_samples"] * args.frames
            print(
                f"video   workers={workers}: {stored / seconds:7.1f} stored frames/s, "
                f"{manifest['total_samples'] * 310 * 2 / seconds:7.1f} decoded frames/s, "
                f"{manifest['total_samples'] / seconds:5.2f} clips/s (10.4 s, 426x240, {args.frames} frames each)"
            )
            result["runs"].append(
                {"kind": "video", "workers": workers, "stored_frames_per_s": stored / seconds,
                 "clips_per_s": manifest["total_samples"] / seconds}
            )  # fmt: skip
    write_results(args.json, result)


if __name__ == "__main__":
    main()
