"""Original Salesforce BLIP / LAVIS `.pth` checkpoints -> HF `BlipFor*` state dicts and configs.

The original layout (Salesforce/BLIP `models/vit.py`, `models/med.py`, `blip_retrieval.py`, `blip.py`, `blip_vqa.py`;
LAVIS keeps the same names) differs from HF's only in the ViT: HF renamed timm's modules, while the BERT parts
(`text_encoder.*`, `text_decoder.bert.*`, `text_decoder.cls.*`) and the heads keep their names. Both ViTs fuse q, k, v
into one `qkv` Linear with the same (3, heads, head_dim) row order, so every tensor is copied unchanged; only names
move. Keys the HF class has no slot for (momentum encoders `*_m`, the ITC queues, `temp`, the non-persistent
`position_ids` buffer, poolers, an MLM head) are dropped and reported. BLIP's learned ITC temperature `temp` has no
slot in HF's classes either; it is kept in the config as `itc_temperature` (saved in config.json), where
`adapters.prepare_model` takes it as the starting temperature.

Command line (who calls it: a user preparing a backbone once, then pointing `model.init_from` at the folder):
    python -m unitrans_ds.models.convert_blip --checkpoint model_base_retrieval_coco.pth --task retrieval --out DIR
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import BlipConfig

from ..cli import ArgumentParser

logger = logging.getLogger(__name__)

# BLIP's text width per attention head (bert-base 768/12, ViT-B 768/12, ViT-L 1024/16).
BLIP_HEAD_DIM = 64

_PARAM = r"(weight|bias)"
# Everything below an original `BertModel` (med.py) that HF's `BlipTextModel` also has, under the same name.
_BERT_BODY = (
    r"(embeddings\.(word_embeddings|position_embeddings|LayerNorm)\." + _PARAM + r"|encoder\.layer\.\d+\."
    r"((attention|crossattention)\.(self\.(query|key|value)|output\.(dense|LayerNorm))"
    r"|intermediate\.dense|output\.(dense|LayerNorm))\." + _PARAM + ")"
)

# (original-name regex, HF replacement). Matched against the whole key; the first match wins.
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r)
    for p, r in [
        (r"visual_encoder\.cls_token", "vision_model.embeddings.class_embedding"),
        (r"visual_encoder\.pos_embed", "vision_model.embeddings.position_embedding"),
        (r"visual_encoder\.patch_embed\.proj\." + _PARAM, r"vision_model.embeddings.patch_embedding.\1"),
        (r"visual_encoder\.blocks\.(\d+)\.norm([12])\." + _PARAM, r"vision_model.encoder.layers.\1.layer_norm\2.\3"),
        (r"visual_encoder\.blocks\.(\d+)\.attn\.qkv\." + _PARAM, r"vision_model.encoder.layers.\1.self_attn.qkv.\2"),
        (
            r"visual_encoder\.blocks\.(\d+)\.attn\.proj\." + _PARAM,
            r"vision_model.encoder.layers.\1.self_attn.projection.\2",
        ),
        (r"visual_encoder\.blocks\.(\d+)\.mlp\.fc([12])\." + _PARAM, r"vision_model.encoder.layers.\1.mlp.fc\2.\3"),
        (r"visual_encoder\.norm\." + _PARAM, r"vision_model.post_layernorm.\1"),
        # ALBEF-style encoders wrap the BertModel as `.bert` (BertForMaskedLM); BLIP's and LAVIS's do not.
        (r"text_encoder\.(?:bert\.)?" + _BERT_BODY, r"text_encoder.\1"),
        (r"text_decoder\.bert\." + _BERT_BODY, r"text_decoder.bert.\1"),
        (
            r"text_decoder\.cls\.predictions\.(bias|decoder\.(weight|bias)|transform\.(dense|LayerNorm)\.(weight|bias))",
            r"text_decoder.cls.predictions.\1",
        ),
        (r"(vision_proj|text_proj|itm_head)\." + _PARAM, r"\1.\2"),
    ]
]


class ModelLoadError(RuntimeError):
    """A backbone could not be built: the message names the source, what was tried and what to do."""


@dataclass
class Conversion:
    """The converted state dict (HF names, only the target class's modules) and the original keys left out.

    `other_tasks` holds the converted tensors that belong to other BLIP task classes (e.g. a pretraining
    checkpoint's decoder when loading retrieval); they are among `dropped` but still tell the model's sizes.
    """

    state_dict: dict[str, torch.Tensor]
    dropped: list[str] = field(default_factory=list)
    other_tasks: dict[str, torch.Tensor] = field(default_factory=dict)
    temperature: float | None = None  # BLIP's learned ITC `temp`, when the checkpoint has one


def hf_key(original: str) -> str | None:
    """HF name of one original BLIP key, or None when HF's BLIP classes have no slot for it (momentum, queues...)."""
    for pattern, repl in _RULES:
        if pattern.fullmatch(original):
            return pattern.sub(repl, original)
    return None


def summarize_keys(keys: Iterable[str], max_groups: int = 12) -> str:
    """`visual_encoder_m.* (152), image_queue`: keys grouped by top-level module (a lone key by name), for logs."""
    keys = list(keys)
    counts = Counter(k.split(".")[0] for k in keys)
    lone = {k.split(".")[0]: k for k in keys}
    parts = [lone[g] if n == 1 else f"{g}.* ({n})" for g, n in counts.most_common(max_groups)]
    if len(counts) > max_groups:
        parts.append(f"... {len(counts) - max_groups} more groups")
    return ", ".join(parts)


def convert_with_report(sd: dict[str, torch.Tensor], task: str, progress: bool = False) -> Conversion:
    """Rename an original BLIP/LAVIS state dict to HF `BlipFor*` names, keeping only what the `task` class owns.

    `sd` is the bare state dict (see `load_original_checkpoint` for the wrappers). A `module.` prefix (saved from
    DistributedDataParallel) is stripped. Tensors are not copied. Returns the HF dict and the dropped original keys.
    """
    from ..tasks.registry import task_class  # the tasks are built on this module

    parts = task_class(task).hf_parts  # keys outside these are not part of the target class
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    other: dict[str, torch.Tensor] = {}
    temperature = None
    for key in tqdm(sd, desc="converting keys", unit="key", disable=not progress):
        name = key[len("module.") :] if key.startswith("module.") else key
        new = hf_key(name)
        if name == "temp" and sd[key].numel() == 1:
            temperature = float(sd[key].float())
        if new is None or not new.startswith(parts):
            dropped.append(key)
            if new is not None:
                other[new] = sd[key]
            continue
        if new in out:
            raise ModelLoadError(f"checkpoint key {key!r} maps to {new!r}, which another key already filled")
        out[new] = sd[key]
    return Conversion(out, dropped, other, temperature)


def convert_blip_state_dict(sd: dict[str, torch.Tensor], task: str) -> dict[str, torch.Tensor]:
    """`convert_with_report(sd, task).state_dict`: original BLIP names -> HF names for the `task` class."""
    return convert_with_report(sd, task).state_dict


def load_original_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an original BLIP/LAVIS `.pth` safely (`weights_only=True`) and unwrap `{"model": ...}`-style wrappers."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint {path} does not exist; check the path (`model.init_from`, or --checkpoint)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the unpickler raises several types; all mean "not a plain tensor file"
        raise ModelLoadError(
            f"could not read {path} with torch.load(weights_only=True): {err}\n"
            "The file holds more than tensors and plain containers, or is not a torch checkpoint. If you trust it, "
            "re-save only its weights: torch.save(torch.load(p, weights_only=False)['model'], 'weights.pth')."
        ) from err
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{path} does not hold a state dict (name -> tensor), nor one under 'model'")
    return obj


def _layer_count(sd: dict[str, torch.Tensor], prefix: str) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if found and found != set(range(len(found))):
        raise ModelLoadError(f"layers under {prefix} are not numbered 0..N-1: {sorted(found)}")
    return len(found)


def _heads(width: int, what: str) -> int:
    if width % BLIP_HEAD_DIM:
        raise ModelLoadError(
            f"{what} width {width} is not a multiple of {BLIP_HEAD_DIM}, so BLIP's head count (width/64) does not "
            "apply; convert it by hand with a BlipConfig that names the head count"
        )
    return width // BLIP_HEAD_DIM


def _need(sd: dict[str, torch.Tensor], key: str, original: str) -> torch.Tensor:
    if key not in sd:
        raise ModelLoadError(f"not a BLIP checkpoint the converter knows: it has no `{original}` (HF `{key}`)")
    return sd[key]


def blip_config_from_state_dict(
    sd: dict[str, torch.Tensor], pad_token_id: int, bos_token_id: int, sep_token_id: int
) -> BlipConfig:
    """Infer the `BlipConfig` of a converted (HF-named) state dict from its tensor shapes.

    Vision width/layers/patch/image size come from the ViT, text width/layers/vocab/positions from whichever BERT
    is present (encoder, else decoder), heads by BLIP's width/64 convention. LayerNorm eps and dropout are those of
    the original code (ViT eps 1e-6; BERT eps 1e-12, dropout 0.1 from BLIP's `med_config.json`). Token ids come
    from the tokenizer the caller resolved.
    """
    pos = _need(sd, "vision_model.embeddings.position_embedding", "visual_encoder.pos_embed")
    patch_w = _need(sd, "vision_model.embeddings.patch_embedding.weight", "visual_encoder.patch_embed.proj.weight")
    fc1 = _need(sd, "vision_model.encoder.layers.0.mlp.fc1.weight", "visual_encoder.blocks.0.mlp.fc1.weight")
    v_width, patch = pos.shape[-1], patch_w.shape[-1]
    grid = math.isqrt(pos.shape[1] - 1)
    if grid * grid != pos.shape[1] - 1:
        raise ModelLoadError(f"visual_encoder.pos_embed has {pos.shape[1] - 1} patch positions, not a square grid")
    text_prefix = next(
        (p for p in ("text_encoder.", "text_decoder.bert.") if f"{p}embeddings.word_embeddings.weight" in sd), None
    )
    if text_prefix is None:
        raise ModelLoadError("not a BLIP checkpoint the converter knows: it has no text_encoder.* nor text_decoder.*")
    words = sd[f"{text_prefix}embeddings.word_embeddings.weight"]
    t_width = words.shape[1]
    if text_prefix == "text_encoder." and "text_decoder.bert.embeddings.word_embeddings.weight" in sd:
        dec = sd["text_decoder.bert.embeddings.word_embeddings.weight"].shape
        if tuple(dec) != tuple(words.shape) or _layer_count(sd, "text_decoder.bert.encoder.layer.") != _layer_count(
            sd, "text_encoder.encoder.layer."
        ):
            raise ModelLoadError("text encoder and decoder differ in size; HF's BLIP shares one text config")
    text = dict(
        vocab_size=words.shape[0],
        hidden_size=t_width,
        encoder_hidden_size=v_width,
        intermediate_size=sd[f"{text_prefix}encoder.layer.0.intermediate.dense.weight"].shape[0],
        num_hidden_layers=_layer_count(sd, f"{text_prefix}encoder.layer."),
        num_attention_heads=_heads(t_width, "text"),
        max_position_embeddings=sd[f"{text_prefix}embeddings.position_embeddings.weight"].shape[0],
        layer_norm_eps=1e-12,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        sep_token_id=sep_token_id,
        eos_token_id=sep_token_id,
    )
    vision = dict(
        hidden_size=v_width,
        intermediate_size=fc1.shape[0],
        num_hidden_layers=_layer_count(sd, "vision_model.encoder.layers."),
        num_attention_heads=_heads(v_width, "vision"),
        image_size=grid * patch,
        patch_size=patch,
        layer_norm_eps=1e-6,
    )
    embed_dim = sd["vision_proj.weight"].shape[0] if "vision_proj.weight" in sd else 256
    return BlipConfig(
        text_config=text, vision_config=vision, image_text_hidden_size=embed_dim, projection_dim=embed_dim
    )


def main(argv: list[str] | None = None) -> None:
    from ..tasks.registry import TASKS

    """CLI: convert one original checkpoint into a `save_pretrained` folder (+ tokenizer when it is known)."""
    parser = ArgumentParser(
        prog="python -m unitrans_ds.models.convert_blip",
        description="Convert an original Salesforce BLIP / LAVIS .pth checkpoint to a HuggingFace BlipFor* folder.",
    )
    parser.add_argument("--checkpoint", required=True, help="The original .pth (bare state dict or {'model': ...}).")
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="Which BlipFor* class to build.")
    parser.add_argument("--out", required=True, help="Output folder (save_pretrained layout).")
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="Tokenizer name or folder to save alongside; default: bert-base-uncased + [DEC]/[ENC] for vocab 30524, "
        "the bundled demo tokenizer when the vocab matches it.",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from ..config.schema import ModelConfig  # the build module imports this one, so import it late
    from .build import ModelLoadError as LoadError  # under `python -m` this module's own class is another object
    from .build import build_from_original, config_hash
    from .processor import blip_image_processor, save_processor

    cfg = ModelConfig(init_from=args.checkpoint, tokenizer=args.tokenizer)
    try:
        model, tokenizer = build_from_original(args.checkpoint, args.task, cfg, require_tokenizer=False, progress=True)
    except LoadError as err:
        parser.exit(1, f"error: {err}\n")
    # The saved config keeps the checkpoint's own image size; interpolation is a choice made at load time.
    out = Path(args.out)
    model.save_pretrained(out)
    if tokenizer is not None:
        save_processor(out, model.config, tokenizer)  # tokenizer + preprocessor_config.json: BlipProcessor loads it
    else:
        blip_image_processor(int(model.config.vision_config.image_size)).save_pretrained(out)
        print("no tokenizer saved: pass --tokenizer, or set `model.tokenizer` when loading the folder")
    print(f"wrote {type(model).__name__} (config {config_hash(model.config)}) to {out}")


if __name__ == "__main__":
    main()
