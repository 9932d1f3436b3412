"""Training step time and peak memory on the BLIP-base architecture (random weights, fp32, CPU) (issue "Training").

One full optimizer step of the retrieval task, as the trainer does it without DeepSpeed: forward through
`RetrievalTask` (from `build_task`), backward, gradient-norm clipping (`optim.clip_grad`), AdamW step from
`build_optimizer`, gradients set to None. Methods: `unitrans` (VCRA + QASN + MCAM), `full` fine-tuning, and
`lora` on the same targets, all at rank `--rank`; optionally `unitrans` with gradient checkpointing.

- Step time: every method's model lives in this one process and the steps run interleaved (see `common.py`);
  reported as ratios (median of per-round ratios).
- Peak memory: each method in its own fresh process (this script with `--child METHOD`): build the model,
  prepare it, build task and optimizer, then clear the RSS high-water mark and run `--memory_steps` steps
  (AdamW allocates its state in the first). Reported net of that model-building baseline: peak VmHWM during
  the steps minus VmRSS before them, i.e. activations, gradients and optimizer state.

Run from the repository root: `.venv/bin/python benchmarks/bench_train_step.py --help`.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from transformers import BlipForImageTextRetrieval

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402  (the script's folder is put on the path first)
    add_json_arg,
    add_machine_args,
    build_blip_base,
    current_rss_bytes,
    interleaved,
    machine_line,
    mib,
    peak_rss_bytes,
    ratio,
    reset_peak_rss,
    retrieval_batch,
    run_json_child,
    write_results,
)

from unitrans_ds.adapters import prepare_model  # noqa: E402
from unitrans_ds.cli import ArgumentParser  # noqa: E402
from unitrans_ds.config import build_config  # noqa: E402
from unitrans_ds.engine.optim import build_optimizer  # noqa: E402
from unitrans_ds.models.tiny import demo_tokenizer  # noqa: E402
from unitrans_ds.tasks import build_task  # noqa: E402

METHODS = ("unitrans", "full", "lora", "unitrans+ckpt")
#: goals (issues "Training" and "Speed"): unitrans against full fine-tuning (time, memory) and LoRA (time)
GOALS = {"time_vs_full": 0.75, "memory_vs_full": 0.35, "time_vs_lora": 0.9}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2, help="Image-text pairs per step (default 2).")
    p.add_argument(
        "--image_size", type=int, default=224, help="Image size in px (BLIP retrieval uses 384; default 224)."
    )
    p.add_argument("--rank", type=int, default=64, help="Rank of VCRA / LoRA (default 64).")
    p.add_argument("--repeats", type=int, default=3, help="Timed rounds per method (default 3).")
    p.add_argument("--warmup", type=int, default=1, help="Untimed steps per method first (default 1).")
    p.add_argument("--memory_steps", type=int, default=2, help="Steps per memory child (default 2).")
    p.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=["unitrans", "full", "lora"],
        help="Methods to compare (default: unitrans full lora). `unitrans+ckpt` adds gradient checkpointing.",
    )
    add_machine_args(p)
    p.add_argument("--skip_memory", action="store_true", help="Only time the steps.")
    p.add_argument("--skip_timing", action="store_true", help="Only measure peak memory.")
    add_json_arg(p, __file__)
    p.add_argument("--child", choices=METHODS, default=None, help=argparse.SUPPRESS)  # internal: one memory run
    args = p.parse_args(argv)
    if args.batch < 2:
        p.error("--batch must be at least 2: ITM needs another pair of the batch as its hard negative")
    if args.image_size % 16:
        p.error(f"--image_size must be a multiple of the ViT patch size 16, got {args.image_size}")
    if args.memory_steps < 1:
        p.error("--memory_steps must be at least 1")
    return args


def make_stepper(base: torch.nn.Module, method: str, args, batch: dict):
    """Prepare a copy of `base` (or `base` itself when `base` is owned by the caller) for `method`.

    Returns `step()` that runs one full optimizer step and the number of trainable parameters.
    """
    name = method.removesuffix("+ckpt")
    cfg = build_config(
        {
            "method": {"name": name, "rank": args.rank},
            "model": {"image_size": args.image_size, "gradient_checkpointing": method.endswith("+ckpt")},
        }
    )
    model = base
    if cfg.model.gradient_checkpointing:
        # as `load_backbone` does it (transformers 5 renamed the method; 4.x only has the old name)
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
        # HF then hooks the word embeddings to output a leaf that requires grad, and BLIP's text embeddings add the
        # positions in place onto it, which autograd refuses. The non-reentrant checkpoint HF uses needs no input
        # grads, so the hook goes. (`load_backbone` does not do this yet: see benchmarks/README.md.)
        model.disable_input_require_grads()
    report = prepare_model(model, cfg.method)
    task = build_task(cfg, model, demo_tokenizer())
    task.train()  # as the trainer; BLIP-base's dropout is 0, and HF only checkpoints in training mode
    optimizer = build_optimizer(task, cfg.optim)
    params = [p for p in task.parameters() if p.requires_grad]
    counter = [0]

    def step() -> None:
        losses = task(batch, counter[0])
        losses["loss"].backward()
        if cfg.optim.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        counter[0] += 1

    return step, report.trainable


def child(args) -> dict:
    """One method's peak memory in this fresh process; printed as one JSON line."""
    base = build_blip_base(BlipForImageTextRetrieval, args.image_size)
    batch = retrieval_batch(args.batch, args.image_size)
    step, trainable = make_stepper(base, args.child, args, batch)
    baseline = current_rss_bytes()
    exact = reset_peak_rss()
    for _ in range(args.memory_steps):
        step()
    peak = peak_rss_bytes()
    return {
        "method": args.child,
        "trainable": trainable,
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": peak,
        "net_peak_bytes": peak - baseline,
        "peak_reset": exact,
    }


def measure_memory(args) -> dict[str, dict]:
    out = {}
    for method in args.methods:
        print(f"memory: {method} in a fresh process ...", file=sys.stderr, flush=True)
        argv = [
            str(Path(__file__).resolve()),
            "--child",
            method,
            "--batch",
            str(args.batch),
            "--image_size",
            str(args.image_size),
            "--rank",
            str(args.rank),
            "--memory_steps",
            str(args.memory_steps),
            *(["--threads", str(args.threads)] if args.threads else []),
        ]
        out[method] = run_json_child(argv)
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args)))
        return {}
    result: dict = {"machine": machine_line(), "args": {k: str(v) for k, v in vars(args).items()}}
    print(f"machine: {result['machine']}")
    print(
        f"BLIP-base (BlipConfig() defaults, random weights), fp32 CPU, retrieval task, batch {args.batch}, "
        f"{args.image_size} px, 35 text tokens, rank {args.rank}; one step = forward, backward, grad clip, AdamW"
    )
    ref = "unitrans" if "unitrans" in args.methods else args.methods[0]

    if not args.skip_memory:
        mem = measure_memory(args)
        result["memory"] = mem
        print("\n== peak memory per step, net of the built model (VmHWM during steps - VmRSS before) ==")
        for m, r in mem.items():
            print(
                f"{m:<15} trainable {r['trainable']:>12,}   model built {mib(r['baseline_rss_bytes']):>14}   "
                f"net peak {mib(r['net_peak_bytes']):>14}"
            )
        for other in args.methods:
            if other != ref:
                print(f"{ref} / {other}: {mem[ref]['net_peak_bytes'] / mem[other]['net_peak_bytes']:.3f}")

    if not args.skip_timing:
        base = build_blip_base(BlipForImageTextRetrieval, args.image_size)
        batch = retrieval_batch(args.batch, args.image_size)
        steppers = {}
        for i, method in enumerate(args.methods):
            model = base if i == len(args.methods) - 1 else copy.deepcopy(base)
            steppers[method], _ = make_stepper(model, method, args, batch)
        del base
        t = interleaved(steppers, args.repeats, args.warmup, "train steps")
        result["timing"] = {k: vars(v) for k, v in t.items()}
        print("\n== step time (forward + backward + clip + AdamW) ==")
        for k, v in t.items():
            print(f"{k:<15} wall median {v.median():7.2f} s   cpu median {v.median('cpu'):7.2f} s")
        for other in args.methods:
            if other != ref:
                rw, rc = ratio(t[ref], t[other]), ratio(t[ref], t[other], "cpu")
                result["timing"][f"ratio_vs_{other}"] = {"wall": vars(rw), "cpu": vars(rc)}
                print(f"{ref} / {other}: wall {rw}, cpu {rc}")
    print(
        f"\ngoals: {ref} time <= {GOALS['time_vs_full']}x full, memory <= {GOALS['memory_vs_full']}x full, "
        f"time <= {GOALS['time_vs_lora']}x lora (same rank and targets)"
    )
    write_results(args.json, result)
    return result


if __name__ == "__main__":
    main()
