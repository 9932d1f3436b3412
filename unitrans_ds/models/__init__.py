"""BLIP backbones: building one for a task from any source, converting original checkpoints, tiny configs.

Names are imported on first use (PEP 562), so `python -m unitrans_ds.models.convert_blip` does not import its own
module twice, and `unitrans_ds.models.tiny` users do not pay for the builder.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Backbone": ".build",
    "bos_token_id": ".build",
    "build_from_original": ".build",
    "config_hash": ".build",
    "enc_token_id": ".build",
    "ensure_blip_tokens": ".build",
    "load_backbone": ".build",
    "resolve_tokenizer": ".build",
    "task_model_class": ".build",
    "ModelLoadError": ".convert_blip",
    "architecture_signature": ".signature",
    "blip_config_from_state_dict": ".convert_blip",
    "convert_blip_state_dict": ".convert_blip",
    "convert_with_report": ".convert_blip",
    "demo_tokenizer": ".tiny",
    "tiny_blip_config": ".tiny",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)


def __dir__() -> list[str]:
    return __all__
