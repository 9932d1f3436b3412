"""A back-of-the-envelope activation-memory estimate, for planning: the dry run (`dryrun/run.py`, `plan.py`)
prints it next to what it measured, and `benchmarks/bench_video.py` next to a measured step.

Video is where memory surprises people: eight frames at 224 px give 8 x 197 vision tokens, and every ITM pair
(one positive and two negatives per sample) runs cross-attention over all of them in every fusion layer. The
estimate counts the tensors autograd keeps per layer; it is an order of magnitude, not a promise (measured numbers
are in benchmarks/README.md). The text length and the fusion passes per sample are the task class's
(`max_text_tokens`, `fusion_passes`).
"""

from __future__ import annotations

from transformers import BlipConfig

from ..config.schema import Config
from ..tasks.registry import task_class


def estimate_activation_bytes(cfg: Config, blip: BlipConfig, dtype_bytes: int = 4) -> dict[str, int]:
    """Bytes of saved activations for one micro batch on one rank, by part."""
    v, t = blip.vision_config, blip.text_config
    b = cfg.train.micro_batch_size
    frames = cfg.data.num_frames if cfg.video else 1
    patches = (cfg.model.image_size // v.patch_size) ** 2 + 1
    n_img = b * frames
    # Per ViT layer and token: layer norms (2D), qkv (3D), context (D), projection (D), MLP in/out (2 x 4D) ~ 15D;
    # plus attention scores and probabilities (2 x heads x L) per token.
    vit = v.num_hidden_layers * n_img * patches * (15 * v.hidden_size + 2 * v.num_attention_heads * patches)
    task = task_class(cfg.task)
    k = task.max_text_tokens
    kv_tokens = frames * patches
    # Fusion passes: ITM runs 3 pairs per sample (1 positive, 2 negatives); captioning / VQA run one.
    pairs = task.fusion_passes * b
    per_text_layer = (
        k * 15 * t.hidden_size  # self-attention block + FFN activations of the text tokens
        + 2 * t.num_attention_heads * k * k
        + 2 * kv_tokens * t.hidden_size  # cross-attention keys and values over every frame token
        + 2 * t.num_attention_heads * k * kv_tokens  # cross-attention scores and probabilities
    )
    fusion = t.num_hidden_layers * pairs * per_text_layer
    # the unimodal text pass of ITC: a task with ITC (the loss its temperature belongs to) encodes texts alone too
    unimodal = t.num_hidden_layers * b * (k * 15 * t.hidden_size) if task.uses_temperature else 0
    parts = {"vision": vit, "fusion": fusion, "text": unimodal}
    return {name: n * dtype_bytes for name, n in parts.items()}


def describe(cfg: Config, blip: BlipConfig, dtype_bytes: int = 4) -> str:
    """The estimate as one line (total and parts)."""
    parts = estimate_activation_bytes(cfg, blip, dtype_bytes)
    total = sum(parts.values())
    frames = f"{cfg.data.num_frames} frames x " if cfg.video else ""
    detail = ", ".join(f"{k} {v / 2**20:,.0f} MiB" for k, v in parts.items() if v)
    return (
        f"estimated activation memory per rank: {total / 2**30:.2f} GiB for a micro batch of "
        f"{cfg.train.micro_batch_size} x {frames}{cfg.model.image_size} px ({detail})"
    )
