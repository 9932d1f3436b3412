"""BLIP backbones: building one for a task from any source, converting original checkpoints, tiny configs."""

from .build import (
    TASK_CLASSES,
    Backbone,
    bos_token_id,
    build_from_original,
    config_hash,
    enc_token_id,
    ensure_blip_tokens,
    load_backbone,
    resolve_tokenizer,
)
from .convert_blip import ModelLoadError, blip_config_from_state_dict, convert_blip_state_dict, convert_with_report
from .tiny import demo_tokenizer, tiny_blip_config

__all__ = [
    "TASK_CLASSES",
    "Backbone",
    "ModelLoadError",
    "blip_config_from_state_dict",
    "bos_token_id",
    "build_from_original",
    "config_hash",
    "convert_blip_state_dict",
    "convert_with_report",
    "demo_tokenizer",
    "enc_token_id",
    "ensure_blip_tokens",
    "load_backbone",
    "resolve_tokenizer",
    "tiny_blip_config",
]
