"""The `lora` baseline saved as a real PEFT adapter, so `PeftModel.from_pretrained(blip, folder)` loads it.

The folder is PEFT's own layout: `adapter_config.json` is a `LoraConfig` (`target_modules` resolved to the module
names, `base_model_name_or_path` as the user gave it, modules trained beside LoRA as `modules_to_save`), and
`adapter_model.safetensors` holds `base_model.model.<module>.lora_A.weight`, ... What PEFT has no field for (the
method settings, the base's class and sizes that `load_adapter` checks, the learned ITC temperature, the training
step) rides in the safetensors header's metadata under `unitrans_ds`, which PEFT ignores.

Why `scaling-vectors` is not peft's VeRA: that ablation (the paper's "+scaling vectors") keeps one random bank per
modality (V, T, C, D), gives the q and the k/v chunks of ViT's fused `qkv` their own Λa, shares Λ between key and
value (as every method of the VCRA family does, so the ablation changes one factor) and draws its banks like
VCRA's. VeRA has one shared A/B pair per adapter, one Λd per wrapped Linear and its own initialisation, so a VeRA
export would be another method, not this one; scaling-vectors adapters use our format, like VCRA's.
"""

from __future__ import annotations

import json
import re

import torch
from torch import nn

from ..config.schema import MethodConfig

PEFT_PREFIX = "base_model.model."
META_KEY = "unitrans_ds"
_TEMP = "unitrans.temp"


def is_peft_config(cfg: dict) -> bool:
    return "peft_type" in cfg


def lora_target_modules(model: nn.Module) -> list[str]:
    """Names of the Linears peft wrapped with LoRA."""
    return sorted(n for n, m in model.named_modules() if isinstance(getattr(m, "lora_A", None), nn.ModuleDict))


def unfrozen_modules(model: nn.Module, method: MethodConfig) -> list[str]:
    """Module names that `method.unfreeze` trains whole (peft's `modules_to_save`)."""
    rx = [re.compile(p) for p in method.unfreeze]
    return sorted(n for n, _ in model.named_modules() if n and any(r.fullmatch(n) for r in rx))


def peft_lora_config(model: nn.Module, method: MethodConfig, base_model: str) -> dict:
    """The `adapter_config.json` that `PeftModel.from_pretrained` reads, as peft's `save_pretrained` writes it."""
    from peft import LoraConfig

    cfg = LoraConfig(
        r=method.rank,
        lora_alpha=method.lora_alpha,
        lora_dropout=method.lora_dropout,
        target_modules=lora_target_modules(model),
        modules_to_save=unfrozen_modules(model, method) or None,
        base_model_name_or_path=base_model,
        inference_mode=True,
    )
    return {k: sorted(v) if isinstance(v, set) else v for k, v in cfg.to_dict().items()}


def to_peft_tensors(tensors: dict[str, torch.Tensor], modules_to_save: list[str]) -> dict[str, torch.Tensor]:
    """Our parameter names -> PEFT's file keys. The temperature is not a BLIP weight and is left to the metadata."""
    out = {}
    for k, v in tensors.items():
        if k == _TEMP:
            continue
        if ".lora_" in k:
            out[PEFT_PREFIX + k.replace(".default.", ".")] = v
        elif any(k.startswith(m + ".") for m in modules_to_save):
            out[PEFT_PREFIX + k] = v
        else:
            raise ValueError(
                f"trainable tensor {k} is neither LoRA nor in a module of method.unfreeze; a PEFT adapter has no "
                "place for it"
            )
    return out


def from_peft_tensors(tensors: dict[str, torch.Tensor], temperature: float | None) -> dict[str, torch.Tensor]:
    """PEFT's file keys -> our parameter names (inverse of `to_peft_tensors`)."""
    out = {}
    for k, v in tensors.items():
        k = k.removeprefix(PEFT_PREFIX)
        out[re.sub(r"\.(lora_[AB])\.", r".\1.default.", k)] = v
    if temperature is not None:
        out[_TEMP] = torch.tensor([temperature])
    return out


def read_metadata(weights: str) -> dict | None:
    """Our record in the safetensors header of a PEFT adapter; None for one written by anything else."""
    from safetensors import safe_open

    with safe_open(weights, "pt") as f:
        meta = (f.metadata() or {}).get(META_KEY)
    return json.loads(meta) if meta else None
