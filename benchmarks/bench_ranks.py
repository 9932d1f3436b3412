"""Data-parallel overhead on CPU: a training step on 2 gloo ranks against 1 rank, same per-rank batch.

Two processes join a gloo group. Each builds the same model (BLIP-base retrieval by default, random weights,
`--method` at rank `--rank`) and two tasks on it: `1 rank` (told world size 1: no gathers, no gradient
all-reduce, each process trains on its own) and `2 ranks` (told its rank and world size 2: ITC, MCAM and ITM
gather features and negatives from both ranks, and the trainable gradients are averaged with one flat
all-reduce, as DDP and ZeRO-2 do). Both processes run both modes, interleaved round by round, so the CPU they
compete for is the same in both and the ratio isolates what distribution costs: collectives, waiting for the
other rank, the larger similarity matrices. A barrier (not timed) starts every step on both ranks together;
a step's time is the slower rank's. The step is forward, backward, gradient clipping, AdamW.

Also counted, per `2 ranks` step: `all_gather` calls (by wrapping `torch.distributed.all_gather` in the
workers while they step) and the bytes they gather. Run from the repository root:
`python benchmarks/bench_ranks.py --help`; figures go to `benchmarks/results/bench_ranks.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import (  # noqa: E402  (the script's folder is put on the path first)
    Timings,
    add_json_arg,
    add_machine_args,
    build_blip_base,
    machine_line,
    ratio,
    retrieval_batch,
    write_results,
)

from unitrans_ds.cli import ArgumentParser  # noqa: E402

MODES = ("1 rank", "2 ranks")
WORLD = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2, help="Image-text pairs per rank per step (default 2).")
    p.add_argument("--image_size", type=int, default=224, help="Image size in px (default 224).")
    p.add_argument("--rank", type=int, default=64, help="Adapter rank (default 64).")
    p.add_argument("--method", default="unitrans", help="Method to train (default unitrans).")
    p.add_argument("--model", choices=["base", "tiny"], default="base", help="BLIP-base or the tiny demo model.")
    p.add_argument("--repeats", type=int, default=3, help="Timed rounds per mode (default 3).")
    p.add_argument("--warmup", type=int, default=1, help="Untimed steps per mode first (default 1).")
    add_machine_args(p)
    add_json_arg(p, __file__)
    args = p.parse_args(argv)
    if args.batch < 2:
        p.error("--batch must be at least 2: ITM needs another pair of the batch as its hard negative")
    return args


def _model(args):
    from transformers import BlipForImageTextRetrieval

    if args.model == "base":
        return build_blip_base(BlipForImageTextRetrieval, args.image_size)
    from unitrans_ds.models.tiny import tiny_blip_config

    torch.manual_seed(0)
    return BlipForImageTextRetrieval(tiny_blip_config(image_size=args.image_size)).eval()


class _GatherCounter:
    """Counts `dist.all_gather` calls and gathered bytes while `active` (installed in the worker only)."""

    def __init__(self) -> None:
        self.calls, self.bytes, self.active = 0, 0, False
        self._orig = dist.all_gather
        dist.all_gather = self._wrapped

    def _wrapped(self, tensor_list, tensor, *a, **k):
        if self.active:
            self.calls += 1
            self.bytes += sum(t.numel() * t.element_size() for t in tensor_list)
        return self._orig(tensor_list, tensor, *a, **k)


def worker(rank: int, args: argparse.Namespace, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(args.threads or 1)
    from unitrans_ds.adapters import prepare_model
    from unitrans_ds.config import build_config
    from unitrans_ds.engine.optim import build_optimizer
    from unitrans_ds.models.tiny import demo_tokenizer
    from unitrans_ds.tasks import build_task

    cfg = build_config({"method": {"name": args.method, "rank": args.rank}, "model": {"image_size": args.image_size}})
    model = _model(args)
    prepare_model(model, cfg.method)
    tok = demo_tokenizer()
    tasks = {"1 rank": build_task(cfg, model, tok, 0, 1), "2 ranks": build_task(cfg, model, tok, rank, WORLD)}
    for t in tasks.values():
        t.train()
    optimizer = build_optimizer(tasks["2 ranks"], cfg.optim)
    params = [p for p in model.parameters() if p.requires_grad]
    batch = retrieval_batch(args.batch, args.image_size, seed=rank)
    batch["image_idx"] = batch["image_idx"] + rank * args.batch  # distinct images over the global batch
    counter, steps = _GatherCounter(), [0]

    def step(mode: str) -> None:
        counter.active = mode == "2 ranks"
        losses = tasks[mode](batch, steps[0])
        losses["loss"].backward()
        counter.active = False
        if mode == "2 ranks":
            grads = [p.grad for p in params if p.grad is not None]  # the same list on every rank
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            for g, avg in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
                g.copy_(avg.view_as(g)).div_(WORLD)
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps[0] += 1

    for _ in range(args.warmup):
        for mode in MODES:
            dist.barrier()
            step(mode)
    counter.calls = counter.bytes = 0
    times = {m: Timings() for m in MODES}
    for r in range(args.repeats):
        for mode in MODES if r % 2 == 0 else tuple(reversed(MODES)):
            dist.barrier()
            c0, w0 = time.process_time(), time.perf_counter()
            step(mode)
            times[mode].wall.append(time.perf_counter() - w0)
            times[mode].cpu.append(time.process_time() - c0)
    gathered = [None] * WORLD
    dist.all_gather_object(gathered, {m: vars(t) for m, t in times.items()})
    if rank == 0:
        per_step = {"all_gather_calls": counter.calls / args.repeats, "all_gather_bytes": counter.bytes / args.repeats}
        Path(out).write_text(json.dumps({"per_rank": gathered, "gathers_per_2rank_step": per_step}))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result: dict = {"machine": machine_line(), "args": {k: str(v) for k, v in vars(args).items()}}
    print(
        f"machine: {result['machine']}\n{args.model} retrieval, {args.method} rank {args.rank}, batch {args.batch} per "
        f"rank at {args.image_size} px, {args.threads or 1} thread(s) per rank; {args.warmup} warmup + "
        f"{args.repeats} interleaved rounds per mode"
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "ranks.json")
        mp.spawn(worker, args=(args, _free_port(), out), nprocs=WORLD, join=True)
        raw = json.loads(Path(out).read_text())
    # A step ends when the slower rank ends: per round, the maximum over ranks.
    slowest = {m: Timings() for m in MODES}
    for m in MODES:
        for kind in ("wall", "cpu"):
            rounds = zip(*(r[m][kind] for r in raw["per_rank"]), strict=True)
            getattr(slowest[m], kind).extend(max(vals) for vals in rounds)
    rw, rc = ratio(slowest["2 ranks"], slowest["1 rank"]), ratio(slowest["2 ranks"], slowest["1 rank"], "cpu")
    result.update(raw)
    result["slowest_rank"] = {m: vars(t) for m, t in slowest.items()}
    result["ratio_2_over_1"] = {"wall": vars(rw), "cpu": vars(rc)}
    for m in MODES:
        print(f"{m:<8} step wall median {slowest[m].median():7.2f} s   cpu median {slowest[m].median('cpu'):7.2f} s")
    g = raw["gathers_per_2rank_step"]
    print(f"2 ranks / 1 rank step time: wall {rw}, cpu {rc}   (goal <= 1.15)")
    print(f"per 2-rank step: {g['all_gather_calls']:.0f} all_gather calls, {g['all_gather_bytes'] / 2**20:.2f} MiB")
    write_results(args.json, result)
    return result


if __name__ == "__main__":
    main()
