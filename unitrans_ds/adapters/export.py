"""Adapter export and import: `adapter_config.json` + `adapter_model.safetensors` (trainable state only).

`save_adapter` writes what trains and nothing else (frozen shared matrices are re-created from the seed). The
`lora` baseline is written as a real PEFT adapter (`peft_export`); every other method in our format, whose config
uses PEFT's field names where they apply (`base_model_name_or_path`, `r`, `target_modules`) and holds each method
setting once. `load_adapter` prepares a freshly built base model with the saved method and loads the tensors,
refusing a base of another class or other sizes with an error that names the mismatch; folders of the first
format (before PEFT-style fields) still load. `save_merged_pretrained` folds VCRA into the weights and writes a
plain HF BLIP folder (with its processor files) for people who only want inference.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .. import __version__
from ..config.schema import MethodConfig, ModelConfig
from ..models.build import resolve_tokenizer
from ..models.processor import save_processor
from ..models.signature import architecture_signature, config_hash
from . import peft_export
from .prepare import has_side_network, merge_adapters, prepare_model, trainable_state_dict, unmerge_adapters
from .state import ATTR
from .targets import DEFAULT_PATTERNS, TargetError
from .vcra_layer import VCRALinear

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = 2

# The MethodConfig fields each kind of method uses; the others do not apply and are not written.
_ALWAYS = ("unfreeze", "freeze", "train_temperature")
_FIELDS_IF = {
    "uses_vcra": ("seed", "train_shared", "share_kv", "learn_scale", "targets"),
    "uses_qasn": ("qasn_activation", "qasn_decoder"),
    "uses_mcam": ("mcam_weight", "mcam_tau"),
}
_LORA_FIELDS = ("targets",)  # r, alpha, dropout and the resolved modules sit in the PEFT config


class AdapterMismatchError(ValueError):
    """The adapter does not fit the base model it is loaded onto."""


def _plain_name(name: str) -> str:
    """A module name as in the plain HF BLIP (the wrappers' `base_layer` levels removed)."""
    return re.sub(r"\.base_layer(?=\.|$)", "", name)


def adapted_modules(model: nn.Module) -> list[str]:
    """The Linears a prepared model adapts (VCRA or LoRA), by their names in the plain HF BLIP."""
    names = [n for n, m in model.named_modules() if isinstance(m, VCRALinear)]
    return sorted(_plain_name(n) for n in names) or peft_export.lora_target_modules(model)


def _resolved_targets(method: MethodConfig, modules: list[str]) -> dict[str, str]:
    """The target pattern of each modality that adapted something (defaults spelled out, unused ones dropped)."""
    merged = {**DEFAULT_PATTERNS, **method.targets}
    blocks = {m.rsplit(".", 1)[0] for m in modules}
    return {mod: rx for mod, rx in merged.items() if any(re.fullmatch(rx, b) for b in blocks)}


def _method_fields(method: MethodConfig, modules: list[str]) -> dict:
    names = list(_ALWAYS) + [f for flag, fs in _FIELDS_IF.items() if getattr(method, flag) for f in fs]
    if method.name == "lora":
        names += _LORA_FIELDS
    out = {"method": method.name, "r": method.rank, **{n: getattr(method, n) for n in names}}
    if "targets" in out:
        out["targets"] = _resolved_targets(method, modules)
    return out


def method_from_config(cfg: dict) -> MethodConfig:
    """The `MethodConfig` a saved config describes (fields it does not hold take their defaults)."""
    fields = {f.name for f in dataclasses.fields(MethodConfig)} - {"name", "rank"}
    return MethodConfig(name=cfg["method"], rank=int(cfg["r"]), **{k: cfg[k] for k in fields if k in cfg})


def save_adapter(
    model: nn.Module,
    out_dir: str | Path,
    method: MethodConfig,
    base_model: str,
    state_dict: dict[str, torch.Tensor] | None = None,
    extra: dict | None = None,
) -> Path:
    """Write the adapter of a prepared `model` to `out_dir`.

    `base_model` is recorded as `base_model_name_or_path`: give it as users will pass it (a hub name, or the
    folder as the config names it). `state_dict` lets a caller pass tensors it gathered itself (ZeRO-3); by
    default the trainable parameters. `extra` (step, task, video, ...) is stored beside the method settings.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = state_dict if state_dict is not None else trainable_state_dict(model)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    modules = adapted_modules(model)
    record = {
        "library_name": "unitrans_ds",
        "unitrans_ds_version": __version__,
        "format_version": FORMAT_VERSION,
        "base_model_name_or_path": base_model,
        "base_model_class": type(model).__name__,
        "base_config_hash": config_hash(model.config),
        "base_architecture": architecture_signature(model.config),
        **_method_fields(method, modules),
        "target_modules": modules,
        **(extra or {}),
    }
    metadata = {"format": "pt", "library": "unitrans_ds"}
    if method.name == "lora":
        cfg = peft_export.peft_lora_config(model, method, base_model)
        temp = tensors.get("unitrans.temp")
        tensors = peft_export.to_peft_tensors(tensors, cfg["modules_to_save"] or [])
        # PEFT's config holds these; the rest goes to the header, where PEFT does not look
        shared = ("base_model_name_or_path", "r", "target_modules")
        meta = {k: v for k, v in record.items() if k not in shared}
        meta["temperature"] = None if temp is None else float(temp.float().reshape(-1)[0])
        metadata[peft_export.META_KEY] = json.dumps(meta)
    else:
        cfg = record
    # Write to temporary names first so an interrupted export never leaves a half-written adapter behind.
    tmp_w, tmp_c = out / (WEIGHTS_NAME + ".tmp"), out / (CONFIG_NAME + ".tmp")
    save_file(tensors, str(tmp_w), metadata=metadata)
    tmp_c.write_text(json.dumps(cfg, indent=2, sort_keys=False))
    tmp_w.replace(out / WEIGHTS_NAME)
    tmp_c.replace(out / CONFIG_NAME)
    return out


def _from_first_format(cfg: dict) -> dict:
    """A config of the first format (`method` as a mapping, `model_class`, `tensors`) in today's field names."""
    m = dict(cfg["method"])
    old = {"library", "method", "rank", "seed", "targets", "model_class", "base_model", "tensors"}
    return {
        "library_name": "unitrans_ds",
        "format_version": 1,
        "base_model_name_or_path": cfg["base_model"],
        "base_model_class": cfg["model_class"],
        **{k: v for k, v in cfg.items() if k not in old},
        "method": m.pop("name"),
        "r": m.pop("rank"),
        **m,
    }


def read_adapter_config(path: str | Path) -> dict:
    """The adapter's record with today's field names, whichever format the folder holds (ours or PEFT's)."""
    p = Path(path) / CONFIG_NAME
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: an adapter folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    cfg = json.loads(p.read_text())
    if peft_export.is_peft_config(cfg):
        weights = Path(path) / WEIGHTS_NAME
        meta = peft_export.read_metadata(str(weights)) if weights.is_file() else None
        if meta is None:
            raise AdapterMismatchError(
                f"{Path(path)} is a PEFT {cfg['peft_type']} adapter not written by unitrans_ds; load it with "
                "peft.PeftModel.from_pretrained(model, path)"
            )
        shared = ("base_model_name_or_path", "r", "lora_alpha", "lora_dropout", "target_modules")
        return {**meta, **{k: cfg[k] for k in shared}}
    if isinstance(cfg.get("method"), dict):
        return _from_first_format(cfg)
    return cfg


def _check_base(model: nn.Module, cfg: dict, path: Path) -> None:
    if type(model).__name__ != cfg["base_model_class"]:
        raise AdapterMismatchError(
            f"adapter {path} was trained on a {cfg['base_model_class']}, but the base model is a "
            f"{type(model).__name__}; build the base with the matching task"
        )
    have = architecture_signature(model.config)
    diffs = [f"{k}: adapter {v}, base {have.get(k)}" for k, v in cfg["base_architecture"].items() if have.get(k) != v]
    if diffs:
        raise AdapterMismatchError(
            f"adapter {path} does not fit this base model ({cfg['base_model_name_or_path']} expected): "
            + "; ".join(diffs)
        )


def _read_tensors(path: Path, cfg: dict) -> dict[str, torch.Tensor]:
    tensors = load_file(str(path / WEIGHTS_NAME))
    if cfg["method"] == "lora" and cfg.get("format_version", 1) >= 2:
        return peft_export.from_peft_tensors(tensors, cfg.get("temperature"))
    return tensors


def _check_tensors(path: Path, tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
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


def load_adapter(model: nn.Module, path: str | Path, strict_hash: bool = False) -> MethodConfig:
    """Prepare a fresh base `model` with the saved method and load the adapter tensors into it.

    Raises `AdapterMismatchError` naming the mismatch (class, sizes, adapted modules, missing/unexpected keys or
    shapes). With `strict_hash`, a base whose full config hash differs (same sizes, other settings) is refused too.
    """
    path = Path(path)
    cfg = read_adapter_config(path)
    _check_base(model, cfg, path)
    if strict_hash and config_hash(model.config) != cfg["base_config_hash"]:
        raise AdapterMismatchError(f"adapter {path} was trained on a base with config hash {cfg['base_config_hash']}")
    if hasattr(model, ATTR):
        raise AdapterMismatchError("load_adapter needs a fresh base model, this one is already prepared")
    method = method_from_config(cfg)
    try:
        prepare_model(model, method)
    except TargetError as e:
        raise AdapterMismatchError(f"adapter {path} does not fit this base model: {e}") from None
    saved = cfg.get("target_modules")
    if saved is not None and sorted(saved) != adapted_modules(model):
        diff = sorted(set(saved) ^ set(adapted_modules(model)))
        raise AdapterMismatchError(f"adapter {path} adapts other modules than this base has: {', '.join(diff[:8])}")
    tensors = _read_tensors(path, cfg)
    _check_tensors(path, tensors, trainable_state_dict(model))
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
    if has_side_network(model):
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
