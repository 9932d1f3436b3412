"""Which attention blocks of a BLIP model each modality adapts, chosen by regex on module names.

An attention block is either a ViT attention with a fused `qkv` Linear (d -> 3d) or a BERT self/cross-attention
with separate `query`, `key`, `value` Linears. Patterns are `re.fullmatch`ed against full module names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

MODALITIES = ("V", "T", "C", "D")

#: Default block patterns per modality (SPEC section 1). The decoder (D) covers self- and cross-attention.
DEFAULT_PATTERNS: dict[str, str] = {
    "V": r"vision_model\.encoder\.layers\.\d+\.self_attn",
    "T": r"text_encoder\.encoder\.layer\.\d+\.attention\.self",
    "C": r"text_encoder\.encoder\.layer\.\d+\.crossattention\.self",
    "D": r"text_decoder\.bert\.encoder\.layer\.\d+\.(attention|crossattention)\.self",
}

#: Which bank each modality draws its shared matrices from (the decoder has its own: SPEC section 2).
BANK_OF = {"V": "enc", "T": "enc", "C": "enc", "D": "dec"}


class TargetError(ValueError):
    """A target pattern matched nothing, or matched something that is not an attention block."""


@dataclass
class AttentionTarget:
    """One adapted attention block: its name, modality and the Linears to wrap."""

    name: str
    modality: str
    module: nn.Module
    fused: bool  # ViT `qkv` (d -> 3d) rather than separate query/key/value

    @property
    def linears(self) -> dict[str, nn.Linear]:
        if self.fused:
            return {"qkv": self.module.qkv}
        return {"query": self.module.query, "key": self.module.key, "value": self.module.value}


def _is_attention(module: nn.Module) -> bool | None:
    """True for fused-qkv blocks, False for separate q/k/v blocks, None for anything else."""
    if isinstance(getattr(module, "qkv", None), nn.Linear):
        return True
    if all(isinstance(getattr(module, n, None), nn.Linear) for n in ("query", "key", "value")):
        return False
    return None


def find_targets(model: nn.Module, patterns: dict[str, str] | None = None) -> list[AttentionTarget]:
    """Attention blocks to adapt, in module order.

    `patterns` overrides the defaults per modality. A user-given pattern that matches no attention block raises
    `TargetError` printing the pattern; a default pattern may match nothing (captioning has no text encoder).
    """
    patterns = dict(patterns or {})
    for mod in patterns:
        if mod not in MODALITIES:
            raise TargetError(f"unknown modality {mod!r} in targets; use one of {', '.join(MODALITIES)}")
    merged = {**DEFAULT_PATTERNS, **patterns}
    compiled = {m: re.compile(p) for m, p in merged.items()}
    found: list[AttentionTarget] = []
    hits = dict.fromkeys(merged, 0)
    for name, module in model.named_modules():
        for mod, rx in compiled.items():
            if not rx.fullmatch(name):
                continue
            fused = _is_attention(module)
            if fused is None:
                raise TargetError(
                    f"target pattern {merged[mod]!r} (modality {mod}) matched {name!r}, which is not an attention "
                    "block with `qkv` or `query`/`key`/`value` Linears; match the attention module itself"
                )
            found.append(AttentionTarget(name, mod, module, fused))
            hits[mod] += 1
            break
    for mod, pattern in patterns.items():
        if hits[mod] == 0:
            raise TargetError(
                f"target pattern {pattern!r} for modality {mod} matched no attention block of "
                f"{type(model).__name__}; module names look like "
                f"{', '.join(n for n, _ in list(model.named_modules())[1:4])}, ..."
            )
    return found
