"""Estimates for planning a paper run on GPUs: the micro batch that fits a GPU, and GPU-hours from FLOPs.

No GPU run of the paper configs exists yet, so both are estimates, and docs/reproducing.md says so:
- memory: bf16 weights of the task class + `ACTIVATION_FACTOR` x the activation estimate of `dryrun/memory.py`
  + `RESERVE_GIB` (CUDA context, allocator slack, evaluation buffers). The factor is the one measured on CPU for
  the BLIP-base video config (20.2 GB peak for a 13.3 GiB fp32 estimate, benchmarks/README.md);
- time: forward FLOPs counted per layer from the BLIP-base shapes (matrix products and attention), training =
  2 x forward (the frozen backbone needs activation gradients but no weight gradients), at `EFFECTIVE_TFLOPS`.
Who calls it: `benchmarks/dry_run_all.py --plan`, which prints the tables of the guide.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import BlipConfig

from ..config import Config
from ..tasks.registry import task_class
from .memory import estimate_activation_bytes

ACTIVATION_FACTOR = 1.42
RESERVE_GIB = 2.0
#: assumed sustained bf16 throughput of one A100-class GPU (about 30% of its 312 TFLOP/s peak)
EFFECTIVE_TFLOPS = 100.0
GPU_GIB = {"24 GB": 24e9 / 2**30, "80 GB": 80e9 / 2**30, "141 GB": 141e9 / 2**30}


@dataclass(frozen=True)
class Workload:
    """Items per training epoch and the sizes of one validation and of the test evaluation."""

    train_items: int
    eval_images: int  # images, clips or (VQA) questions scored per evaluation
    eval_texts: int  # retrieval only: captions per evaluation
    test_images: int
    test_texts: int


#: from the data sets' published sizes (the splits of the configs; VQA counts questions)
WORKLOADS = {
    "coco_retrieval": Workload(566_747, 5_000, 25_000, 5_000, 25_000),
    "flickr30k_retrieval": Workload(145_000, 1_014, 5_070, 1_000, 5_000),
    "coco_captioning": Workload(566_747, 5_000, 0, 5_000, 0),
    "vqav2": Workload(443_757, 214_354, 0, 0, 0),
    "msrvtt_retrieval": Workload(180_000, 0, 0, 1_000, 1_000),
    "didemo_retrieval": Workload(8_400, 1_065, 1_065, 1_004, 1_004),
    "msrvtt_qa": Workload(158_581, 12_278, 0, 72_821, 0),
}


def weight_gib(cfg: Config, blip: BlipConfig) -> float:
    """bf16 bytes of the task class's weights (counted on the meta device: nothing is allocated)."""
    with torch.device("meta"):
        model = task_class(cfg.task).hf_model(blip)
    return sum(p.numel() for p in model.parameters()) * 2 / 2**30


def memory_gib(cfg: Config, blip: BlipConfig, micro: int) -> float:
    acts = estimate_activation_bytes(_with_micro(cfg, micro), blip, 2)
    return weight_gib(cfg, blip) + ACTIVATION_FACTOR * sum(acts.values()) / 2**30 + RESERVE_GIB


def _with_micro(cfg: Config, micro: int) -> Config:
    from dataclasses import replace

    return replace(cfg, train=replace(cfg.train, micro_batch_size=micro))


def fitting_micro_batch(cfg: Config, blip: BlipConfig, gpus: int, gib: float) -> tuple[int, int] | None:
    """(micro batch, accumulation) with the largest micro batch dividing global/gpus that fits `gib`."""
    per_gpu, rem = divmod(cfg.train.global_batch_size, gpus)
    if rem:
        return None
    for micro in sorted((m for m in range(1, per_gpu + 1) if per_gpu % m == 0), reverse=True):
        if memory_gib(cfg, blip, micro) <= gib:
            return micro, per_gpu // micro
    return None


def _layer(tokens: int, width: int, kv_tokens: int = 0) -> float:
    """Forward FLOPs of one BERT/ViT layer: q/k/v/o and a 4x MLP (24 t d^2), self-attention (4 t^2 d), and with
    `kv_tokens` a cross-attention (q/o on the text 4 t d^2, k/v on the image tokens 4 kv d^2, scores 4 t kv d)."""
    flops = 24 * tokens * width**2 + 4 * tokens**2 * width
    if kv_tokens:
        flops += 4 * tokens * width**2 + 4 * kv_tokens * width**2 + 4 * tokens * kv_tokens * width
    return flops


def forward_flops(cfg: Config, blip: BlipConfig) -> dict[str, float]:
    """Forward FLOPs of the pieces: one image/clip, one text, one fusion pair, one decoder pass."""
    v, t = blip.vision_config, blip.text_config
    frames = cfg.data.num_frames if cfg.video else 1
    patches = (cfg.model.image_size // v.patch_size) ** 2 + 1
    k = task_class(cfg.task).max_text_tokens
    return {
        "image": frames * v.num_hidden_layers * _layer(patches, v.hidden_size),
        "text": t.num_hidden_layers * _layer(k, t.hidden_size),
        "pair": t.num_hidden_layers * _layer(k, t.hidden_size, frames * patches),
        "decode": t.num_hidden_layers * _layer(k, t.hidden_size, frames * patches)
        + 2 * k * t.hidden_size * t.vocab_size,
        # VQA rank inference re-scores an 8-token answer that cross-attends to the question states
        "answer": t.num_hidden_layers * _layer(8, t.hidden_size, k) + 2 * 8 * t.hidden_size * t.vocab_size,
    }


def gpu_hours(name: str, cfg: Config, blip: BlipConfig) -> dict[str, float]:
    """Training and evaluation GPU-hours of a whole run (every epoch, a validation per epoch, one test)."""
    f, w, task = forward_flops(cfg, blip), WORKLOADS[name], task_class(cfg.task)
    settings = task.settings_from(cfg)
    train = 2 * sum(n * f[piece] for piece, n in task.train_passes.items()) * w.train_items * cfg.train.epochs
    evals = cfg.train.epochs * task.eval_flops(f, w.eval_images, w.eval_texts, settings) + task.eval_flops(
        f, w.test_images, w.test_texts, settings
    )
    to_hours = 1 / (EFFECTIVE_TFLOPS * 1e12 * 3600)
    return {"train_gpu_hours": train * to_hours, "eval_gpu_hours": evals * to_hours}
