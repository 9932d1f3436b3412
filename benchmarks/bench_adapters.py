"""Adapter cost on the BLIP-base architecture (random weights, fp32, CPU), in one process (issue "Core").

1. Training overhead: forward + backward of the real retrieval training step (`RetrievalTask` through
   `build_task`: ITC + ITM with hard negatives, + MCAM for unitrans) with UniTrans at rank `--rank`, against the
   frozen model doing the same step with the backward of the same activations. A model with nothing trainable
   has no backward at all, so the baseline is the `frozen` method with the outputs of the vision embeddings
   (patch + position) and of the text embeddings (word + position, every text-encoder pass) marked as requiring
   grad: its backward runs through every transformer layer, computing activation gradients and no weight
   gradient. UniTrans's backward computes the same activation gradients plus those of its adapter parameters.
2. Merged inference: forward only (`torch.no_grad()`), the evaluation path of retrieval (image embedding, text
   embedding, ITM logits of the pairs), for `vcra` merged (pure VCRA, folded into the weights) and `unitrans`
   merged (VCRA folded; QASN is a side network and stays), against the plain base. Adapter parameters are
   randomised away from their init first, so a merge really changes the weights.
3. Parameter counts for retrieval, captioning and VQA (unitrans, vcra, lora at the same rank, UniAdapter's
   published 19.5M at r=512 as a reference), and the size of the adapter file `save_adapter` writes for
   BLIP-base retrieval against the fp32 size of the full model.

Timings are interleaved (see `common.py`); ratios are medians of per-round ratios. Run from the repository root:
`.venv/bin/python benchmarks/bench_adapters.py --help`.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch
from transformers import BlipForImageTextRetrieval

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402  (the script's folder is put on the path first)
    Timings,
    add_json_arg,
    add_machine_args,
    blip_base_config,
    build_blip_base,
    interleaved,
    machine_line,
    mib,
    ratio,
    retrieval_batch,
    write_results,
)

from unitrans_ds.adapters import merge_adapters, parameter_report, prepare_model, save_adapter  # noqa: E402
from unitrans_ds.adapters.export import WEIGHTS_NAME  # noqa: E402
from unitrans_ds.cli import ArgumentParser  # noqa: E402
from unitrans_ds.config import build_config  # noqa: E402
from unitrans_ds.models.tiny import demo_tokenizer  # noqa: E402
from unitrans_ds.tasks import TASKS, build_task  # noqa: E402

UNIADAPTER_PARAMS = 19_500_000  # UniAdapter (Lu et al., ICLR 2024), BLIP-base, r = 512, as published


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2, help="Image-text pairs per step (default 2).")
    p.add_argument(
        "--image_size", type=int, default=224, help="Image size in px (BLIP retrieval uses 384; default 224)."
    )
    p.add_argument("--rank", type=int, default=64, help="Rank of VCRA / LoRA (default 64, the paper's ~0.19M).")
    p.add_argument("--repeats", type=int, default=3, help="Timed rounds per variant (default 3).")
    p.add_argument(
        "--inference_repeats",
        type=int,
        default=8,
        help="Timed rounds per variant in part 2 (default 8: forwards are short, noise on a shared machine is not).",
    )
    p.add_argument("--warmup", type=int, default=1, help="Untimed runs per variant first (default 1).")
    add_machine_args(p)
    p.add_argument(
        "--methods",
        nargs="+",
        choices=["unitrans", "vcra", "vcra+qasn", "vcra+mcam"],
        default=["unitrans"],
        help="Methods timed against the baseline in part 1 (default unitrans; `vcra` etc. split its overhead).",
    )
    p.add_argument("--skip_training", action="store_true", help="Skip part 1 (training overhead).")
    p.add_argument("--skip_inference", action="store_true", help="Skip part 2 (merged inference).")
    add_json_arg(p, __file__)
    args = p.parse_args(argv)
    if args.batch < 2:
        p.error("--batch must be at least 2: ITM needs another pair of the batch as its hard negative")
    if args.image_size % 16:
        p.error(f"--image_size must be a multiple of the ViT patch size 16, got {args.image_size}")
    return args


def _cfg(method: str, rank: int, image_size: int):
    return build_config({"method": {"name": method, "rank": rank}, "model": {"image_size": image_size}})


def _require_grad_output(_module, _inputs, output):  # a torch forward hook
    # Frozen embeddings produce tensors that need no grad; marking them makes autograd run the whole backward.
    return output.requires_grad_(True)


def _randomise_adapters(model: torch.nn.Module, seed: int) -> None:
    """Move every adapter parameter (not the temperature) away from its init, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and name != "unitrans.temp":
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))


# ---------------------------------------------------------------------------------------------- part 3: sizes
def parameter_counts(rank: int) -> list[dict]:
    """Trainable parameters per task and method, counted on models built on the meta device (no memory)."""
    rows = []
    for task, cls in TASKS.items():
        for method in ("unitrans", "vcra", "lora"):
            with torch.device("meta"):
                model = cls.hf_model(blip_base_config(384))
            report = prepare_model(model, _cfg(method, rank, 384).method)
            rows.append({"task": task, "method": method, "trainable": report.trainable, "total": report.total})
    return rows


def adapter_file_size(model: torch.nn.Module, cfg) -> dict:
    """Bytes of the adapter `save_adapter` writes, against the fp32 bytes of every distinct model tensor."""
    seen: dict[int, torch.Tensor] = {}
    for t in model.state_dict().values():
        seen.setdefault(t.untyped_storage().data_ptr(), t)
    full = sum(t.numel() * t.element_size() for t in seen.values())
    with tempfile.TemporaryDirectory() as tmp:
        out = save_adapter(model, tmp, cfg.method, base_model="blip-base (random weights)")
        weights = (out / WEIGHTS_NAME).stat().st_size
        folder = sum(f.stat().st_size for f in out.iterdir())
    return {"adapter_weights_bytes": weights, "adapter_folder_bytes": folder, "full_model_fp32_bytes": full}


# ---------------------------------------------------------------------------------------------- parts 1 and 2
def training_overhead(base: torch.nn.Module, args, batch: dict, tokenizer) -> tuple[dict[str, Timings], dict]:
    frozen = copy.deepcopy(base)
    cfg_f = _cfg("frozen", args.rank, args.image_size)
    prepare_model(frozen, cfg_f.method)
    for m in (frozen.vision_model.embeddings, frozen.text_encoder.embeddings):
        m.register_forward_hook(_require_grad_output)
    tasks, info = {"frozen+act-grad": build_task(cfg_f, frozen, tokenizer)}, {}
    for method in args.methods:
        model, cfg = copy.deepcopy(base), _cfg(method, args.rank, args.image_size)
        info[f"{method}_trainable"] = prepare_model(model, cfg.method).trainable
        tasks[method] = build_task(cfg, model, tokenizer)
    for t in tasks.values():
        t.train()  # as the trainer (BLIP-base's dropout is 0, so this changes no computation)
    step = [0]

    def fwd_bwd(task):
        def run():
            losses = task(batch, step[0])
            if not losses["loss"].requires_grad:
                raise RuntimeError("the loss does not require grad: the backward would be empty")
            losses["loss"].backward()
            task.zero_grad(set_to_none=True)
            step[0] += 1

        return run

    timings = interleaved({k: fwd_bwd(t) for k, t in tasks.items()}, args.repeats, args.warmup, "fwd+bwd")
    del tasks, frozen, model
    return timings, info


def merged_inference(base: torch.nn.Module, args, batch: dict, tokenizer) -> tuple[dict[str, Timings], dict]:
    models, info = {"base": copy.deepcopy(base)}, {}
    prepare_model(models["base"], _cfg("frozen", args.rank, args.image_size).method)
    for name in ("vcra", "unitrans"):
        m = copy.deepcopy(base)
        prepare_model(m, _cfg(name, args.rank, args.image_size).method)
        _randomise_adapters(m, seed=1)
        info[f"{name}_merged_layers"] = merge_adapters(m)
        models[f"{name} merged"] = m
    tasks = {k: build_task(_cfg("frozen", args.rank, args.image_size), m, tokenizer) for k, m in models.items()}

    def forward(task):
        @torch.no_grad()
        def run():
            tokens, _ = task.image_embed(batch["pixel_values"])
            ids, mask, _ = task.text_embed(batch["text"])
            task.itm_logits(tokens, ids, mask)

        return run

    timings = interleaved(
        {k: forward(t) for k, t in tasks.items()}, args.inference_repeats, args.warmup, "merged inference"
    )
    return timings, info


def _fmt(r: dict) -> str:
    return f"{r['paired_median']:.3f} (rounds {r['paired_min']:.3f}..{r['paired_max']:.3f})"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result: dict = {"machine": machine_line(), "args": {k: str(v) for k, v in vars(args).items()}}
    print(f"machine: {result['machine']}")
    print(
        f"BLIP-base (BlipConfig() defaults, random weights), fp32 CPU, batch {args.batch}, {args.image_size} px, "
        f"35 text tokens, rank {args.rank}; {args.warmup} warmup + {args.repeats} interleaved rounds per variant "
        f"({args.inference_repeats} for inference)"
    )

    counts = parameter_counts(args.rank)
    result["parameters"] = counts
    print(f"\n== trainable parameters, rank {args.rank} (counted on the meta device) ==")
    print(f"{'task':<12}{'method':<10}{'trainable':>14}{'% of total':>12}")
    for r in counts:
        print(f"{r['task']:<12}{r['method']:<10}{r['trainable']:>14,}{100 * r['trainable'] / r['total']:>11.3f}%")
    print(f"{'reference':<12}{'UniAdapter r=512 (published)':<28}{UNIADAPTER_PARAMS:>14,}")

    base = build_blip_base(BlipForImageTextRetrieval, args.image_size)
    tokenizer = demo_tokenizer()
    batch = retrieval_batch(args.batch, args.image_size)

    sized = copy.deepcopy(base)
    cfg_u = _cfg("unitrans", args.rank, args.image_size)
    prepare_model(sized, cfg_u.method)
    sizes = adapter_file_size(sized, cfg_u)
    sizes["unitrans_trainable"] = parameter_report(sized).trainable
    del sized
    result["sizes"] = sizes
    print("\n== adapter file, BLIP-base retrieval, unitrans ==")
    print(
        f"adapter_model.safetensors {mib(sizes['adapter_weights_bytes'])} (folder with config: "
        f"{mib(sizes['adapter_folder_bytes'])}) against the full model's fp32 tensors "
        f"{mib(sizes['full_model_fp32_bytes'])}: {sizes['adapter_weights_bytes'] / sizes['full_model_fp32_bytes']:.5f}x"
    )

    if not args.skip_training:
        t, _ = training_overhead(base, args, batch, tokenizer)
        result["training"] = {k: vars(v) for k, v in t.items()}
        for method in args.methods:
            r_wall, r_cpu = ratio(t[method], t["frozen+act-grad"]), ratio(t[method], t["frozen+act-grad"], "cpu")
            result["training"][f"ratio_{method}"] = {"wall": vars(r_wall), "cpu": vars(r_cpu)}
        print("\n== 1. forward+backward of the retrieval training step ==")
        print(
            "baseline `frozen+act-grad`: frozen backbone, vision and text embedding outputs require grad, so the "
            "backward runs through every layer (activation gradients only, no weight gradients)"
        )
        for k, v in t.items():
            print(f"{k:<18} wall median {v.median():7.2f} s   cpu median {v.median('cpu'):7.2f} s")
        for method in args.methods:
            r = result["training"][f"ratio_{method}"]
            print(f"{method} / baseline: wall {_fmt(r['wall'])}, cpu {_fmt(r['cpu'])}   (goal for unitrans <= 1.10)")

    if not args.skip_inference:
        t, info = merged_inference(base, args, batch, tokenizer)
        result["inference"] = {k: vars(v) for k, v in t.items()} | info
        print("\n== 2. merged inference, forward only (image embed + text embed + ITM logits) ==")
        print(f"merged layers: vcra {info['vcra_merged_layers']}, unitrans {info['unitrans_merged_layers']}")
        for k, v in t.items():
            print(f"{k:<18} wall median {v.median():7.2f} s   cpu median {v.median('cpu'):7.2f} s")
        for k in ("vcra merged", "unitrans merged"):
            rw, rc = ratio(t[k], t["base"]), ratio(t[k], t["base"], "cpu")
            result["inference"][f"ratio_{k.split()[0]}"] = {"wall": vars(rw), "cpu": vars(rc)}
            note = "goal 1.00 within noise" if k == "vcra merged" else "QASN side network remains"
            print(f"{k} / base: wall {rw}, cpu {rc}   ({note})")

    write_results(args.json, result)
    return result


if __name__ == "__main__":
    main()
