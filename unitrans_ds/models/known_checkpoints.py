"""The original Salesforce BLIP-base checkpoints by file name: where each comes from, what it was trained on,
and its architecture (stored here because it cannot be downloaded where the dry run runs).

Who calls it: `load_backbone` (a clear "download it from ..." error when a named checkpoint is absent, and
`model.init_from: random:<name>`, the named checkpoint's architecture with random weights, used by the dry run).
URLs and lineage are those of BLIP's README (salesforce/BLIP); image sizes are those the checkpoints' position
embeddings were saved at (pretraining 224 px, retrieval and captioning fine-tuning 384 px, VQA 480 px).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from transformers import BlipConfig

#: `model.init_from` prefix: build the named checkpoint's architecture with random weights (no download)
RANDOM_PREFIX = "random:"
_BASE_URL = "https://storage.googleapis.com/sfr-vision-language-research/BLIP/models/"
_ALL_TASKS = ("retrieval", "captioning", "vqa")


@dataclass(frozen=True)
class KnownCheckpoint:
    """One original BLIP-base `.pth`: its lineage, the image size it was saved at, the task classes it fills."""

    name: str
    lineage: str
    image_size: int
    tasks: tuple[str, ...]

    @property
    def url(self) -> str:
        return _BASE_URL + self.name


KNOWN_CHECKPOINTS: dict[str, KnownCheckpoint] = {
    c.name: c
    for c in (
        KnownCheckpoint("model_base.pth", "pretrained only (129M image-text pairs), no fine-tuning", 224, _ALL_TASKS),
        KnownCheckpoint("model_base_14M.pth", "pretrained only (14M image-text pairs)", 224, _ALL_TASKS),
        KnownCheckpoint(
            "model_base_capfilt_large.pth",
            "pretrained only (129M pairs, captions bootstrapped by CapFilt-L)",
            224,
            _ALL_TASKS,
        ),
        KnownCheckpoint(
            "model_base_retrieval_coco.pth", "fine-tuned on COCO retrieval (Karpathy)", 384, ("retrieval",)
        ),
        KnownCheckpoint("model_base_retrieval_flickr.pth", "fine-tuned on Flickr30K retrieval", 384, ("retrieval",)),
        KnownCheckpoint(
            "model_base_caption_capfilt_large.pth", "fine-tuned on COCO captioning (CapFilt-L)", 384, ("captioning",)
        ),
        KnownCheckpoint("model_vqa.pth", "fine-tuned on VQA v2 (+ Visual Genome QA)", 480, ("vqa",)),
        KnownCheckpoint(
            "model_base_vqa_capfilt_large.pth", "fine-tuned on VQA v2 (+ Visual Genome QA), CapFilt-L", 480, ("vqa",)
        ),
    )
}


def known_checkpoint(source: str) -> KnownCheckpoint | None:
    """The entry whose file name is the last part of `source` (a path or a bare name), or None."""
    return KNOWN_CHECKPOINTS.get(Path(source).name)


def missing_checkpoint_message(source: str) -> str:
    """The error for a `model.init_from` that names a known checkpoint which is not on this machine."""
    ckpt = KNOWN_CHECKPOINTS[Path(source).name]
    folder = Path(source).parent
    return (
        f"model.init_from={source!r}: the file does not exist. It is BLIP-base {ckpt.lineage}. Download it once on "
        f"a machine with internet: `wget -P {folder} {ckpt.url}` (or copy it here), or set model.init_from to "
        "where it is. It is converted on load; nothing else needs downloading except the bert-base-uncased "
        "tokenizer (or set model.tokenizer)."
    )


def architecture(name: str) -> BlipConfig:
    """The `BlipConfig` of the known checkpoint `name` (file name or path), as the converter would infer it."""
    ckpt = known_checkpoint(name)
    if ckpt is None:
        raise KeyError(
            f"no stored architecture for {name!r}; known checkpoints: {', '.join(sorted(KNOWN_CHECKPOINTS))}"
        )
    text = (resources.files("unitrans_ds") / "models" / "architectures" / "blip_base.json").read_text()
    spec = {k: v for k, v in json.loads(text).items() if not k.startswith("_")}
    spec = copy.deepcopy(spec)
    spec["vision_config"]["image_size"] = ckpt.image_size
    return BlipConfig(**spec)
