"""What identifies a BLIP architecture: the sizes an adapter depends on, and a hash of the whole config."""

from __future__ import annotations

import hashlib
import json

from transformers import PretrainedConfig

# Fields that say nothing about the architecture (they change with the transformers version or the folder).
_VOLATILE = {
    "transformers_version",
    "_name_or_path",
    "name_or_path",
    "torch_dtype",
    "dtype",
    "_commit_hash",
    "architectures",
    "itc_temperature",  # a starting value of a trained parameter (models.convert_blip), not a size
}


def _clean(d):
    if isinstance(d, dict):
        return {k: _clean(v) for k, v in sorted(d.items()) if k not in _VOLATILE}
    return d


def config_hash(config: PretrainedConfig) -> str:
    """A short sha256 of the canonical JSON of `config` without volatile fields."""
    blob = json.dumps(_clean(config.to_dict()), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def architecture_signature(config: PretrainedConfig) -> dict[str, int]:
    """The sizes an adapter's tensors depend on, by name, so that a mismatch can be named."""
    v, t = config.vision_config, config.text_config
    return {
        "vision.hidden_size": v.hidden_size,
        "vision.num_hidden_layers": v.num_hidden_layers,
        "vision.num_attention_heads": v.num_attention_heads,
        "text.hidden_size": t.hidden_size,
        "text.num_hidden_layers": t.num_hidden_layers,
        "text.num_attention_heads": t.num_attention_heads,
        "text.encoder_hidden_size": t.encoder_hidden_size,
        "text.vocab_size": t.vocab_size,
        "image_text_hidden_size": config.image_text_hidden_size,
    }
