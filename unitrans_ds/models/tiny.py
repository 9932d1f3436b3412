"""Tiny BLIP configurations and the bundled demo tokenizer, for tests and the offline demo.

The tiny models have the exact module structure of BLIP-base (ViT with fused qkv, BERT with cross-attention,
text decoder), only narrower and shallower, so everything tested on them holds for the real checkpoints.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from transformers import BertTokenizer, BlipConfig

from ..config.schema import TinyModelConfig

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"]


def demo_vocab_path() -> Path:
    """The bundled WordPiece vocabulary that covers the `shapes` data set (and spells anything else)."""
    return Path(str(resources.files("unitrans_ds") / "assets" / "tiny_vocab.txt"))


def demo_tokenizer() -> BertTokenizer:
    """BERT tokenizer over the demo vocabulary, with BLIP's extra `[DEC]` (bos) and `[ENC]` tokens."""
    tok = BertTokenizer(str(demo_vocab_path()), do_lower_case=True)
    tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    return tok


def tiny_blip_config(
    tiny: TinyModelConfig | None = None,
    image_size: int = 64,
    vocab_size: int | None = None,
    pad_token_id: int = 0,
    bos_token_id: int = 5,
    sep_token_id: int = 3,
) -> BlipConfig:
    """A `BlipConfig` with BLIP-base's structure at tiny sizes. Token ids default to the demo vocabulary's."""
    t = tiny or TinyModelConfig()
    if vocab_size is None:
        vocab_size = sum(1 for _ in demo_vocab_path().open())
    text = dict(
        vocab_size=vocab_size,
        hidden_size=t.text_width,
        encoder_hidden_size=t.vision_width,
        intermediate_size=t.text_width * t.intermediate_mult,
        num_hidden_layers=t.text_layers,
        num_attention_heads=t.text_heads,
        max_position_embeddings=t.max_position_embeddings,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        sep_token_id=sep_token_id,
        eos_token_id=sep_token_id,
    )
    vision = dict(
        hidden_size=t.vision_width,
        intermediate_size=t.vision_width * t.intermediate_mult,
        num_hidden_layers=t.vision_layers,
        num_attention_heads=t.vision_heads,
        image_size=image_size,
        patch_size=t.patch_size,
        # HF's BlipVisionConfig defaults to 1e-10 (BLIP's ViT always loads pretrained weights), which made every
        # tiny ViT start as all zeros: no image reached the text before training had grown the weights. Tiny
        # models train from scratch, so the ViT gets the std of its text side and of ViT/timm's init.
        initializer_range=0.02,
    )
    return BlipConfig(
        text_config=text, vision_config=vision, image_text_hidden_size=t.embed_dim, projection_dim=t.embed_dim
    )
