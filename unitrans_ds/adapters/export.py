"""Adapter export and import: `adapter_config.json` + `adapter_model.safetensors` (trainable state only).

`save_adapter` writes what trains and nothing else (frozen shared matrices are re-created from the seed).
`load_adapter` prepares a freshly built base model with the saved method and loads the tensors, refusing a base
of another class or other sizes with an error that names the mismatch. `save_merged_pretrained` folds VCRA into
the weights and writes a plain HF BLIP folder for people who only want inference.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .. import __version__
from ..config.schema import MethodConfig, ModelConfig
from ..models.build import resolve_tokenizer
from ..models.processor import save_processor
from ..models.signature import architecture_signature, config_hash
from .prepare import has_side_network, merge_adapters, prepare_model, trainable_state_dict, unmerge_adapters
from .qasn import QASNLayer
from .state import ATTR
from .vcra_layer import VCRALinear

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


class AdapterMismatchError(ValueError):
    """The adapter does not fit the base model it is loaded onto."""


def save_adapter(
    model: nn.Module,
    out_dir: str | Path,
    method: MethodConfig,
    base_model: str,
    state_dict: dict[str, torch.Tensor] | None = None,
    extra: dict | None = None,
) -> Path:
    """Write the adapter of a prepared `model` to `out_dir`.

    `state_dict` lets a caller pass tensors it gathered itself (ZeRO-3); by default the trainable parameters.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = state_dict if state_dict is not None else trainable_state_dict(model)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    cfg = {
        "library": "unitrans_ds",
        "unitrans_ds_version": __version__,
        "method": dataclasses.asdict(method),
        "rank": method.rank,
        "seed": method.seed,
        "targets": method.targets,
        "model_class": type(model).__name__,
        "base_model": base_model,
        "base_config_hash": config_hash(model.config),
        "base_architecture": architecture_signature(model.config),
        "tensors": {k: list(v.shape) for k, v in sorted(tensors.items())},
        **(extra or {}),
    }
    # Write to temporary names first so an interrupted export never leaves a half-written adapter behind.
    tmp_w, tmp_c = out / (WEIGHTS_NAME + ".tmp"), out / (CONFIG_NAME + ".tmp")
    save_file(tensors, str(tmp_w), metadata={"format": "pt", "library": "unitrans_ds"})
    tmp_c.write_text(json.dumps(cfg, indent=2, sort_keys=False))
    tmp_w.replace(out / WEIGHTS_NAME)
    tmp_c.replace(out / CONFIG_NAME)
    return out


def read_adapter_config(path: str | Path) -> dict:
    p = Path(path) / CONFIG_NAME
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: an adapter folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    return json.loads(p.read_text())


def _check_base(model: nn.Module, cfg: dict, path: Path) -> None:
    if type(model).__name__ != cfg["model_class"]:
        raise AdapterMismatchError(
            f"adapter {path} was trained on a {cfg['model_class']}, but the base model is a {type(model).__name__}; "
            f"build the base with the matching task"
        )
    have = architecture_signature(model.config)
    diffs = [f"{k}: adapter {v}, base {have.get(k)}" for k, v in cfg["base_architecture"].items() if have.get(k) != v]
    if diffs:
        raise AdapterMismatchError(
            f"adapter {path} does not fit this base model ({cfg['base_model']} expected): " + "; ".join(diffs)
        )


def load_adapter(model: nn.Module, path: str | Path, strict_hash: bool = False) -> MethodConfig:
    """Prepare a fresh base `model` with the saved method and load the adapter tensors into it.

    Raises `AdapterMismatchError` naming the mismatch (class, sizes, missing/unexpected keys or shapes). With
    `strict_hash`, a base whose full config hash differs (same sizes, other settings) is refused too.
    """
    path = Path(path)
    cfg = read_adapter_config(path)
    _check_base(model, cfg, path)
    if strict_hash and config_hash(model.config) != cfg["base_config_hash"]:
        raise AdapterMismatchError(f"adapter {path} was trained on a base with config hash {cfg['base_config_hash']}")
    if hasattr(model, ATTR):
        raise AdapterMismatchError("load_adapter needs a fresh base model, this one is already prepared")
    method = MethodConfig(**cfg["method"])
    prepare_model(model, method)
    tensors = load_file(str(path / WEIGHTS_NAME))
    expected = trainable_state_dict(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    bad_shapes = [
        f"{k}: adapter {tuple(tensors[k].shape)}, model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(tensors))
        if tensors[k].shape != expected[k].shape
    ]
    if missing or unexpected or bad_shapes:
        lines = [f"adapter {path} does not match the prepared model:"]
        if missing:
            lines.append(f"  missing ({len(missing)}): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            lines.append(
                f"  unexpected ({len(unexpected)}): {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}"
            )
        if bad_shapes:
            lines.append("  shape mismatch: " + "; ".join(bad_shapes[:8]))
        raise AdapterMismatchError("\n".join(lines))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in tensors.items():
            params[k].copy_(v.to(params[k].dtype))
    return method


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the wrapped model under plain BLIP names (wrappers' `base_layer` levels removed)."""
    wrapped = [n for n, m in model.named_modules() if isinstance(m, VCRALinear)]
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith(ATTR + ".") or ".vcra_" in k:
            continue
        for n in wrapped:
            if k.startswith(n + ".base_layer."):
                k = n + "." + k[len(n + ".base_layer.") :]
                break
        out[k] = v
    return out


@torch.no_grad()
def save_merged_pretrained(model: nn.Module, out_dir: str | Path, tokenizer=None) -> Path:
    """Fold VCRA into the weights and write a plain HF BLIP folder (`from_pretrained` loads it, no adapters).

    The folder also gets `preprocessor_config.json` and the tokenizer files, so `BlipProcessor.from_pretrained`
    loads it too. `tokenizer=None` resolves the tokenizer from the vocabulary size (`resolve_tokenizer`: the demo
    vocabulary, or bert-base-uncased + [DEC]/[ENC] for BLIP's), and fails before writing anything when it cannot.
    QASN is a side network with its own computation and cannot be folded into BLIP's weights: a model with QASN is
    refused (export the adapter instead).
    """
    if has_side_network(model) or any(isinstance(m, QASNLayer) for m in model.modules()):
        raise ValueError(
            "this model has a QASN side network, which cannot be folded into BLIP weights; "
            "use save_adapter() and load_adapter() instead"
        )
    if any("lora_" in n for n, _ in model.named_parameters()):
        raise ValueError("merged export of LoRA models: use peft's merge_and_unload on a PeftModel instead")
    if tokenizer is None:
        tokenizer = resolve_tokenizer(ModelConfig(init_from=str(out_dir)), model.config.text_config.vocab_size)
    merged_now = merge_adapters(model)
    try:
        plain = type(model)(model.config)
        missing, unexpected = plain.load_state_dict(_plain_state_dict(model), strict=False)
        real_missing = [k for k in missing if not k.endswith("position_ids")]
        if real_missing or unexpected:
            raise RuntimeError(f"merged export lost keys: missing {real_missing[:5]}, unexpected {unexpected[:5]}")
        out = Path(out_dir)
        plain.save_pretrained(out)
        save_processor(out, plain.config, tokenizer)
    finally:
        if merged_now:
            unmerge_adapters(model)
    return out
