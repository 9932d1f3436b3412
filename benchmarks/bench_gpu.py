"""Training throughput and memory on one CUDA GPU: BLIP-base retrieval at 384 px in bf16, unitrans / full / LoRA.

One training step of the retrieval task (ITC + ITM with hard negatives, + MCAM for unitrans) at a realistic
per-GPU batch (`--batch`, default 32, BLIP's retrieval recipe), rank `--rank`, measured two ways:

- `direct`: the model in fp32 with `torch.autocast(bfloat16)`, forward, backward, gradient clipping and AdamW
  from `build_optimizer`, as a plain PyTorch loop does it;
- `zero2`: the same task through a DeepSpeed engine built from the shipped `ds_configs/zero2.json` (bf16
  weights with fp32 master copies, ZeRO stage 2), resolved by `resolve_ds_config` as the trainer does.

For each way the methods run interleaved (order flipped every round, see `common.py`): pairs per second (median
over rounds), peak GPU memory of a step net of what was allocated before it (`torch.cuda.max_memory_allocated`),
and the unitrans / full and unitrans / LoRA step-time ratios with their spread over rounds. Random weights
(`BlipConfig()` defaults at 384 px), synthetic pixels and the demo tokenizer's captions padded to 35 tokens.

Sized to finish well within 8 minutes on one H200 (it has not run on a GPU yet: estimate, not measured). Without
CUDA the script stops with one line.
Run from the repository root: `python benchmarks/bench_gpu.py --help`; figures go to
`benchmarks/results/bench_gpu.json`.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import (  # noqa: E402  (the script's folder is put on the path first)
    Timings,
    add_json_arg,
    build_blip_base,
    ratio,
    retrieval_batch,
    write_results,
)

from unitrans_ds.cli import ArgumentParser  # noqa: E402

METHODS = ("unitrans", "full", "lora")
WAYS = ("direct", "zero2")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32, help="Image-text pairs per step on the GPU (default 32).")
    p.add_argument("--image_size", type=int, default=384, help="Image size in px (default 384, BLIP retrieval).")
    p.add_argument("--rank", type=int, default=64, help="Rank of VCRA / LoRA (default 64).")
    p.add_argument("--rounds", type=int, default=5, help="Interleaved timed rounds per method (default 5).")
    p.add_argument("--steps", type=int, default=4, help="Steps per method per round (default 4).")
    p.add_argument("--warmup", type=int, default=3, help="Untimed steps per method first (default 3).")
    p.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS), help="direct and/or zero2 (default both).")
    add_json_arg(p, __file__)
    args = p.parse_args(argv)
    if args.batch < 2:
        p.error("--batch must be at least 2: ITM needs another pair of the batch as its hard negative")
    if args.image_size % 16:
        p.error(f"--image-size must be a multiple of the ViT patch size 16, got {args.image_size}")
    return args


def require_cuda() -> None:
    """Stop with one line where there is no usable CUDA device (this benchmark means nothing on a CPU)."""
    if not torch.cuda.is_available():
        build = torch.version.cuda or "none (a CPU-only build)"
        raise SystemExit(
            f"bench_gpu.py needs a CUDA GPU, and torch.cuda.is_available() is False here (torch {torch.__version__}, "
            f"CUDA {build}); run it on a machine with an NVIDIA GPU. CPU measurements: bench_train_step.py."
        )
    if not torch.cuda.is_bf16_supported():
        raise SystemExit(f"bench_gpu.py measures bf16 training; {torch.cuda.get_device_name()} has no bf16 support.")


def _cfg(method: str, args):
    from unitrans_ds.config import build_config

    return build_config(
        {
            "method": {"name": method, "rank": args.rank},
            "model": {"image_size": args.image_size},
            "train": {"micro_batch_size": args.batch, "global_batch_size": args.batch, "precision": "bf16"},
        }
    )


def _direct(task, cfg):
    from unitrans_ds.engine.optim import build_optimizer

    optimizer = build_optimizer(task, cfg.optim)
    params = [p for p in task.parameters() if p.requires_grad]

    def step(batch: dict, i: int) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = task(batch, i)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _zero2(task, cfg):
    import deepspeed

    from unitrans_ds.engine.ds_config import resolve_ds_config
    from unitrans_ds.engine.optim import build_optimizer

    ds = resolve_ds_config("zero2", cfg, world_size=1, bf16_supported=True)
    engine, _, _, _ = deepspeed.initialize(model=task, optimizer=build_optimizer(task, cfg.optim), config=ds)

    def step(batch: dict, i: int) -> None:
        loss = engine(batch, i)["loss"]
        engine.backward(loss)
        engine.step()

    return step


def build_steppers(base, way: str, args) -> dict:
    from unitrans_ds.adapters import prepare_model
    from unitrans_ds.models.tiny import demo_tokenizer
    from unitrans_ds.tasks import build_task

    steppers = {}
    for method in METHODS:
        cfg = _cfg(method, args)
        model = copy.deepcopy(base)
        prepare_model(model, cfg.method)
        task = build_task(cfg, model.cuda(), demo_tokenizer())
        task.train()
        steppers[method] = (_direct if way == "direct" else _zero2)(task, cfg)
    return steppers


def measure(steppers: dict, args, batch: dict) -> dict:
    """Warm up, then interleaved rounds of `args.steps` steps per method; one peak-memory step per method."""
    counter = [0]

    def run(method: str, n: int) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            steppers[method](batch, counter[0])
            counter[0] += 1
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / n

    memory = {}
    for m in METHODS:
        run(m, args.warmup)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run(m, 1)
        memory[m] = torch.cuda.max_memory_allocated() - before
    timings = {m: Timings() for m in METHODS}
    for r in range(args.rounds):
        for m in METHODS if r % 2 == 0 else reversed(METHODS):
            timings[m].wall.append(run(m, args.steps))
    out = {
        m: {
            "step_s": timings[m].wall,
            "pairs_per_s": args.batch / statistics.median(timings[m].wall),
            "net_peak_memory_bytes": memory[m],
        }
        for m in METHODS
    }
    for other in ("full", "lora"):
        out[f"unitrans_vs_{other}"] = {
            "time": vars(ratio(timings["unitrans"], timings[other])),
            "memory": memory["unitrans"] / memory[other],
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    require_cuda()
    from transformers import BlipForImageTextRetrieval

    from unitrans_ds.engine.distributed import init_distributed

    init_distributed()  # DeepSpeed needs a process group, even a one-process one
    result: dict = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    print(
        f"{result['device']}, torch {torch.__version__}: BLIP-base retrieval, {args.image_size} px, batch "
        f"{args.batch}, rank {args.rank}, bf16; {args.warmup} warmup + {args.rounds} rounds x {args.steps} steps"
    )
    base = build_blip_base(BlipForImageTextRetrieval, args.image_size)
    batch = retrieval_batch(args.batch, args.image_size)
    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    for way in args.ways:
        steppers = build_steppers(base, way, args)
        result[way] = figures = measure(steppers, args, batch)
        del steppers
        torch.cuda.empty_cache()
        print(f"\n== {way} ==")
        for m in METHODS:
            f = figures[m]
            print(
                f"{m:<9} {f['pairs_per_s']:8.1f} pairs/s   step {statistics.median(f['step_s']) * 1000:7.1f} ms   "
                f"net peak {f['net_peak_memory_bytes'] / 2**30:6.2f} GiB"
            )
        for other in ("full", "lora"):
            r = figures[f"unitrans_vs_{other}"]
            t = r["time"]
            print(
                f"unitrans / {other}: time {t['paired_median']:.3f} (rounds {t['paired_min']:.3f}.."
                f"{t['paired_max']:.3f}), memory {r['memory']:.3f}"
            )
    write_results(args.json, result)
    return result


if __name__ == "__main__":
    main()
