"""Loader throughput: the WebDataset shard pipeline against a plain per-file JPEG folder loader, same images.

Makes `--images` COCO-sized (640x480) JPEGs from real COCO photos (random crops, flips and colour shifts of
the images in `--source`), writes them both as shards (with manifest.json) and as a folder of files, then
times, with the same number of DataLoader workers and the training transforms at `--size` px:
- `shards`: `build_train_loader` (tar streaming, shuffle buffers, reduced-size JPEG decoding, uint8 until the
  batch is normalized);
- `folder`: a map-style per-file loader like LAVIS's (`Image.open(path)` per item) running the same
  `TrainTransform` and batch normalization;
- `folder-naive`: the same folder read LAVIS's way end to end: full `Image.open(...).convert("RGB")`, crop then
  resize, flip, RandAugment, then a per-sample float tensor and normalization (what torchvision's
  ToTensor + Normalize do).
Reported: images per wall-clock second (and per worker; workers = 0 counts as one, the main process), and
CPU milliseconds per image in the main process and in the workers, whose sum gives the rate of one dedicated
core even on a shared, busy machine. The loaders run in `--rounds` interleaved rounds (order flipped every
round, so drift on a shared machine hits them alike); figures are medians over rounds, with the per-round
min..max of images per core-second. Run: `python benchmarks/bench_loader.py --help`.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import io
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from common import add_json_arg, machine_line, write_results  # (run as a script: its folder is on the path)
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from unitrans_ds.cli import ArgumentParser
from unitrans_ds.data.loaders import build_train_loader
from unitrans_ds.data.randaugment import RandAugment
from unitrans_ds.data.transforms import CLIP_MEAN, CLIP_STD, TrainTransform, normalize_batch, random_resized_crop_box

DEFAULT_SOURCE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "images"


def make_images(source: Path, n: int, seed: int) -> list[bytes]:
    """`n` 640x480 JPEGs (quality 90) cut from the photos in `source`."""
    photos = [Image.open(p).convert("RGB") for p in sorted(source.glob("*.jpg"))]
    if not photos:
        raise FileNotFoundError(f"No .jpg in {source}; pass --source with a folder of photos.")
    rng = random.Random(seed)
    out = []
    for _ in tqdm(range(n), desc="making 640x480 JPEGs"):
        img = rng.choice(photos)
        box = random_resized_crop_box(img.width, img.height, rng, scale=(0.6, 1.0), ratio=(1.2, 1.45))
        img = img.resize((640, 480), Image.Resampling.BICUBIC, box=box)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        gains = np.array([rng.uniform(0.8, 1.2) for _ in range(3)], np.float32)
        img = Image.fromarray((np.asarray(img) * gains).clip(0, 255).astype(np.uint8))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def write_folder_and_shards(images: list[bytes], root: Path, per_shard: int) -> tuple[Path, Path]:
    folder, shards = root / "folder", root / "shards"
    folder.mkdir(parents=True)
    shards.mkdir(parents=True)
    entries = []
    for s, start in enumerate(range(0, len(images), per_shard)):
        name = f"shard-{s:06d}.tar"
        chunk = range(start, min(start + per_shard, len(images)))
        with wds.TarWriter(str(shards / name)) as sink:
            for i in chunk:
                meta = {
                    "id": f"bench{i:05d}",
                    "image": f"{i:05d}.jpg",
                    "captions": [f"bench image {i}"],
                    "questions": [],
                }
                sink.write({"__key__": f"bench{i:05d}", "jpg": images[i], "json": json.dumps(meta).encode()})
                (folder / f"{i:05d}.jpg").write_bytes(images[i])
        data = (shards / name).read_bytes()
        entries.append(
            {
                "name": name,
                "samples": len(chunk),
                "captions": len(chunk),
                "questions": 0,
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data),
            }
        )
    manifest = {
        "format": "unitrans_ds-shards",
        "split": "train",
        "tasks": ["retrieval"],
        "total_samples": len(images),
        "num_captions": len(images),
        "num_questions": 0,
        "frames": None,
        "shards": entries,
        "skipped": {},
        "args": {"generator": "benchmarks/bench_loader.py"},
        "version": 1,
    }
    (shards / "manifest.json").write_text(json.dumps(manifest))
    return folder, shards


class FolderDataset(Dataset):
    """Per-file loader: one `open()` per image; `naive` reproduces LAVIS's full-decode, float-per-sample path."""

    def __init__(self, folder: Path, size: int, naive: bool, seed: int) -> None:
        self.files = sorted(folder.glob("*.jpg"))
        self.size, self.naive, self.seed = size, naive, seed
        self.fast = TrainTransform(size)
        self.augment = RandAugment()
        self.mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CLIP_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        rng = random.Random(self.seed * 1_000_003 + i)
        if not self.naive:
            return self.fast(self.files[i].read_bytes(), rng)
        img = Image.open(self.files[i]).convert("RGB")
        box = random_resized_crop_box(img.width, img.height, rng)
        img = img.crop(box).resize((self.size, self.size), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        img = self.augment(img, rng)
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255)
        return (x - self.mean) / self.std


def collate_uint8(items: list[np.ndarray]) -> torch.Tensor:
    """Stack in the worker, hand over uint8; `measure` normalizes in this process, as the shard loader does."""
    return torch.from_numpy(np.stack(items))


def _cpu_seconds() -> tuple[float, float]:
    """(CPU seconds of this process, which receives and normalizes batches; of its finished worker processes)."""
    t = os.times()
    return t.user + t.system, t.children_user + t.children_system


def measure(make_iter, passes: int, desc: str) -> tuple[float, float, float, float]:
    """(images per wall second, main-process CPU ms per image, worker CPU ms per image, the part of the main
    process's ms per image spent starting and stopping each pass's workers) over `passes` passes.

    Full passes, so every batch a worker prepares is consumed; the iterator is dropped after each pass so
    its workers exit and their CPU time is counted. CPU per image is what stays meaningful on a machine
    shared with other jobs; 1000 / (main + worker ms) is the rate of one dedicated core. Starting and stopping
    the workers (fork, join, a garbage collection) is a fixed cost per pass, about 0.4 s of main-process CPU
    here, so it weighs 2 ms per image on a 200-image pass and nothing on a real epoch: it is reported apart.
    """
    images, wall0, (main0, work0) = 0, time.perf_counter(), _cpu_seconds()
    fixed = 0.0
    with tqdm(desc=desc, unit="img") as bar:
        for p in range(passes):
            c0 = time.process_time()
            it = make_iter(p)
            fixed += time.process_time() - c0
            for batch in it:
                x = batch["pixel_values"] if isinstance(batch, dict) else batch
                if x.dtype == torch.uint8:
                    x = normalize_batch(x)
                images += x.shape[0]
                bar.update(x.shape[0])
            c0 = time.process_time()
            del it
            gc.collect()
            fixed += time.process_time() - c0
    wall = time.perf_counter() - wall0
    main1, work1 = _cpu_seconds()
    return images / wall, 1000 * (main1 - main0) / images, 1000 * (work1 - work0) / images, 1000 * fixed / images


def main() -> None:
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200, help="How many 640x480 JPEGs to make.")
    ap.add_argument("--size", type=int, default=384, help="Output image size (px).")
    ap.add_argument("--batch", type=int, default=16, help="Batch size.")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers for every loader (0 = main process).")
    ap.add_argument("--passes", type=int, default=3, help="Full passes over the images per loader.")
    ap.add_argument("--per_shard", type=int, default=50, help="Images per shard.")
    ap.add_argument("--rounds", type=int, default=3, help="Interleaved rounds over the loaders (default 3).")
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="Folder of photos to cut images from.")
    ap.add_argument("--seed", type=int, default=0, help="Seed for image making and loader randomness.")
    add_json_arg(ap, __file__)
    args = ap.parse_args()
    torch.set_num_threads(1)  # one core per worker, like a real DataLoader worker

    images = make_images(args.source, args.images, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder, shards = write_folder_and_shards(images, Path(tmp), args.per_shard)
        per_worker = max(1, args.workers)
        loader = build_train_loader(
            shards,
            task="retrieval",
            image_size=args.size,
            micro_batch_size=args.batch,
            num_workers=args.workers,
            seed=args.seed,
        )

        def shard_iter(p: int):
            loader.set_epoch(p)
            return iter(loader)

        loaders = {"shards (ours)": shard_iter}
        for name, naive in (("folder, same transforms", False), ("folder, LAVIS-style naive", True)):
            dl = DataLoader(
                FolderDataset(folder, args.size, naive, args.seed),
                batch_size=args.batch,
                shuffle=True,
                num_workers=args.workers,
                collate_fn=None if naive else collate_uint8,
                drop_last=True,
            )
            loaders[name] = lambda _p, dl=dl: iter(dl)
        runs: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in loaders}
        for r in range(args.rounds):
            for name in list(loaders) if r % 2 == 0 else reversed(list(loaders)):
                runs[name].append(measure(loaders[name], args.passes, f"round {r + 1}: {name}"))

    def median(values: list[float]) -> float:
        return float(np.median(values))

    rows = []
    for name, rr in runs.items():
        per_core = [1000 / (m + w) for _, m, w, _ in rr]
        steady = [1000 / (m - f + w) for _, m, w, f in rr]
        rows.append((name, *(median([x[i] for x in rr]) for i in range(4)), median(per_core), per_core, steady))
    print(
        f"\n{args.images} JPEGs 640x480 -> {args.size}px train transforms, batch {args.batch}, workers {args.workers}, "
        f"{args.rounds} interleaved rounds (medians)"
    )
    print(
        f"{'loader':<28}{'img/s wall':>11}{'per worker':>11}{'main ms/img':>12}{'(start/stop)':>13}"
        f"{'worker ms/img':>14}{'img/core-s':>11}{'steady':>8}  rounds"
    )
    for name, rate, main_ms, work_ms, fixed_ms, core, per_core, steady in rows:
        print(
            f"{name:<28}{rate:>11.1f}{rate / per_worker:>11.1f}{main_ms:>12.2f}{fixed_ms:>13.2f}{work_ms:>14.2f}"
            f"{core:>11.1f}{median(steady):>8.1f}  {min(per_core):.1f}..{max(per_core):.1f}"
        )
    print(
        "CPU columns: CPU time per image in this process and in the workers; img/core-s = 1000 / their sum. "
        "(start/stop): the main process's part spent starting and stopping each pass's workers, a fixed cost per "
        "pass; steady = 1000 / (main - start/stop + worker), the rate over a long epoch."
    )
    result = {"machine": machine_line(), "args": {k: str(v) for k, v in vars(args).items()}, "loaders": {}}
    for name, rate, main_ms, work_ms, fixed_ms, core, per_core, steady in rows:
        result["loaders"][name] = {
            "images_per_s_wall": rate,
            "main_cpu_ms_per_image": main_ms,
            "main_cpu_ms_per_image_worker_start_stop": fixed_ms,
            "worker_cpu_ms_per_image": work_ms,
            "images_per_core_s": core,
            "images_per_core_s_rounds": per_core,
            "images_per_core_s_steady": median(steady),
            "images_per_core_s_steady_rounds": steady,
            "rounds": [
                dict(zip(("images_per_s_wall", "main_cpu_ms", "worker_cpu_ms", "main_start_stop_cpu_ms"), x))
                for x in runs[name]
            ],
        }
    write_results(args.json, result)


if __name__ == "__main__":
    main()
