"""Video against image retrieval training, and the memory of the default video config.

1. Samples/s of a UniTrans retrieval training step (forward, backward, AdamW) on the tiny demo model, video
   (`--frames` frames per clip) against images, same micro batch, interleaved in one process.
2. For the default video config (`configs/msrvtt_retrieval.yaml`: BLIP-base architecture with random weights,
   8 frames at 224 px): the activation-memory estimate of the dry run (`dryrun/memory.py`), and the measured peak
   resident memory of one training step, each measured in a fresh subprocess (peak RSS only grows within a process).

    python benchmarks/bench_video.py [--frames 8] [--batch 8] [--repeats 5] [--base_batch 8] [--skip_base]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import add_json_arg, machine_line, write_results  # noqa: E402  (run as a script: its folder is on the path)

from unitrans_ds.adapters import prepare_model  # noqa: E402
from unitrans_ds.cli import ArgumentParser  # noqa: E402
from unitrans_ds.config import build_config, load_config  # noqa: E402
from unitrans_ds.dryrun.memory import describe  # noqa: E402
from unitrans_ds.engine.optim import build_optimizer  # noqa: E402
from unitrans_ds.models.build import load_backbone  # noqa: E402
from unitrans_ds.tasks import build_task  # noqa: E402

TEXTS = [
    "a purple star moves to the left",
    "two cyan crosses move up",
    "an orange hexagon moves right",
    "a pink diamond",
]


def _task(cfg):
    bb = load_backbone(cfg.model, cfg.task, seed=0)
    prepare_model(bb.model, cfg.method)
    task = build_task(cfg, bb.model, bb.tokenizer)
    task.train()
    return task, build_optimizer(task, cfg.optim)


def _batch(b: int, size: int, frames: int | None) -> dict:
    shape = (b, frames, 3, size, size) if frames else (b, 3, size, size)
    return {
        "pixel_values": torch.randn(shape),
        "text": [TEXTS[i % len(TEXTS)] for i in range(b)],
        "image_idx": torch.arange(b),
    }


def _step(task, opt, batch) -> float:
    t0 = time.perf_counter()
    task(batch, 0)["loss"].backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def tiny_throughput(frames: int, batch: int, repeats: int) -> dict:
    cfg = build_config({"task": "retrieval", "model": {"image_size": 64}, "method": {"rank": 16}})
    task, opt = _task(cfg)
    img, vid = _batch(batch, 64, None), _batch(batch, 64, frames)
    for b in (img, vid):  # warm-up
        _step(task, opt, b)
    times = {"image": [], "video": []}
    for _ in range(repeats):  # interleaved, so drift from other load hits both alike
        times["image"].append(_step(task, opt, img))
        times["video"].append(_step(task, opt, vid))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "image_samples_per_s": batch / med["image"],
        "video_samples_per_s": batch / med["video"],
        "video_over_image_time": med["video"] / med["image"],
        "frames": frames,
        "batch": batch,
    }


def base_video_step(batch: int) -> dict:
    """One training step of the default video config on BLIP-base (random weights): run in a subprocess."""
    cfg = load_config(
        ROOT / "configs" / "msrvtt_retrieval.yaml", ["model.init_from=tiny", f"train.micro_batch_size={batch}"]
    )
    from transformers import BlipConfig, BlipForImageTextRetrieval

    from unitrans_ds.models.build import random_init_config
    from unitrans_ds.models.tiny import demo_tokenizer

    blip = random_init_config(BlipConfig())
    blip.vision_config.image_size = cfg.model.image_size  # 224 px frames: no interpolation needed for the timing
    tok = demo_tokenizer()
    model = BlipForImageTextRetrieval(blip)
    # The demo vocabulary's ids are a subset of BLIP-base's rows, so its tokenizer drives the big model fine.
    model.config.text_config.bos_token_id = tok.bos_token_id
    prepare_model(model, cfg.method)
    task = build_task(cfg, model, tok)
    task.train()
    opt = build_optimizer(task, cfg.optim)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step = _step(task, opt, _batch(batch, cfg.model.image_size, cfg.data.num_frames))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "estimate_fp32": describe(cfg, blip, 4),
        "estimate_bf16": describe(cfg, blip, 2),
        "rss_before_step_mib": before,
        "peak_rss_mib": peak,
        "step_increase_mib": peak - before,
        "step_s": step,
        "batch": batch,
    }


def main() -> None:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--base_batch", type=int, default=8, help="micro batch of the BLIP-base video step (config: 8)")
    p.add_argument("--skip_base", action="store_true", help="skip the BLIP-base memory measurement")
    p.add_argument("--_base_child", type=int, default=None, help=argparse.SUPPRESS)
    add_json_arg(p, __file__)
    args = p.parse_args()
    torch.manual_seed(0)
    if args._base_child is not None:
        print(json.dumps(base_video_step(args._base_child)))
        return
    tiny = tiny_throughput(args.frames, args.batch, args.repeats)
    print(f"tiny retrieval training, micro batch {args.batch}, {args.frames} frames per clip at 64 px:")
    print(f"  image {tiny['image_samples_per_s']:.1f} samples/s, video {tiny['video_samples_per_s']:.1f} samples/s")
    print(f"  video step / image step time: {tiny['video_over_image_time']:.2f}x")
    result = {"machine": machine_line(), "args": {k: str(v) for k, v in vars(args).items()}, "tiny": tiny}
    if args.skip_base:
        write_results(args.json, result)
        return
    out = subprocess.run(
        [sys.executable, __file__, "--_base_child", str(args.base_batch)], capture_output=True, text=True, check=True
    )
    base = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"BLIP-base, default video config (configs/msrvtt_retrieval.yaml), micro batch {base['batch']}, fp32 CPU:")
    print(f"  {base['estimate_fp32']}")
    print(f"  (in bf16 on a GPU: {base['estimate_bf16']})")
    print(
        f"  measured: resident {base['rss_before_step_mib']:,.0f} MiB before the step, peak {base['peak_rss_mib']:,.0f} MiB "
        f"(+{base['step_increase_mib']:,.0f} MiB for the step); step took {base['step_s']:.1f} s"
    )
    result["blip_base_video_step"] = base
    write_results(args.json, result)


if __name__ == "__main__":
    main()
