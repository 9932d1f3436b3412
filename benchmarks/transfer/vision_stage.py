"""Stage 0 of the scenes backbones: the tiny ViT trained to name what stands in each cell of the 3x3 grid.

BLIP does not train its image encoder from scratch: it starts from a ViT pretrained on ImageNet, which already
resolves objects. This stage plays that part for the tiny backbones: supervised classification, per grid cell, of
the shape (or "none"), colour, size and mark of the object there, on domain A images drawn by the scenes generator
(the layouts of `./shards/make_scenes.sh`'s image_a/train for the first 3000, the same generator's next indices
beyond; images only, no texts). Its test numbers come from the generator's test split, which is image_a/test.
A scene head (`SceneHead`, on by default) also trains the CLS token, which ITC reads, to name every cell.

Why: trained from texts alone, the ViTs learned a bag of colours. A linear probe of the committed retrieval ViT's
patch tokens (this module's `CellProbe`, ViT frozen) reads colour 99.6% but shape 38.6% (chance 16.7) and mark
38.3% (chance 33.3); the same tiny ViT trained by this stage reads shapes far better (pretrained/README.md).

    python -m benchmarks.transfer.vision_stage [--images 6000] [--epochs 12] [--out runs/pretrain/vision]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unitrans_ds.cli import ArgumentParser
from unitrans_ds.data.scenes import make_sample, render_jpegs
from unitrans_ds.data.scenes.world import COLORS, MARKS, SHAPES, SIZES
from unitrans_ds.data.transforms import normalize_batch, open_image

#: the classes of each cell attribute; index 0 is an empty cell (a mark can be "none" on an object)
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": ("empty", *SHAPES),
    "color": ("empty", *COLORS),
    "size": ("empty", *SIZES),
    "mark": ("empty", *MARKS),
}
GRID = 3  # scenes place objects on a 3x3 grid (unitrans_ds/data/scenes/layout.py)
WINDOW = 3  # patches per side of a cell's window


@dataclass(frozen=True)
class VisionRecipe:
    images: int = 6000  # domain A images, generator indices 0.. of the train split
    epochs: int = 12
    lr: float = 1e-3
    batch: int = 64
    weight_decay: float = 0.05
    warmup: float = 0.1  # share of the steps
    # also train the CLS token to name every cell (`SceneHead`): ITC reads the image from CLS alone, which the
    # cell head never trains (retrieval's first stage, A test ITC R@1: 19.0 / 15.7 before it, 37.2 / 29.4 with it;
    # pretrained/README.md)
    scene_head: bool = True


def cell_targets(scene: dict) -> np.ndarray:
    """[9, 4] class indices (shape, colour, size, mark) per grid cell, row-major; 0 where the cell is empty."""
    out = np.zeros((GRID * GRID, len(ATTRIBUTES)), dtype=np.int64)
    for obj in scene["objects"]:
        out[obj["row"] * GRID + obj["col"]] = [names.index(obj[key]) for key, names in ATTRIBUTES.items()]
    return out


def scene_images(seed: int, split: str, count: int, image_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Domain A images `0..count-1` of `split` as the loader feeds them (JPEG, decoded, CLIP-normalised), and
    their cell targets: float [N, 3, H, W], int64 [N, 9, 4]."""
    pixels, targets = [], []
    for i in range(count):
        sample = make_sample(seed, "a", split, "image", i, image_size, 8, f"vision-{split}-{i}")
        pixels.append(np.asarray(open_image(render_jpegs(sample.scene)[0]).convert("RGB")))
        targets.append(cell_targets(sample.scene))
    return normalize_batch(np.stack(pixels)), torch.from_numpy(np.stack(targets))


def cell_windows(patches_per_side: int) -> list[tuple[int, int]]:
    """The top-left patch (row, col) of each cell's WINDOW x WINDOW patch window, row-major over the grid."""
    starts = []
    for i in range(GRID):
        centre = (i + 0.5) * patches_per_side / GRID
        starts.append(min(max(math.floor(centre - 1), 0), patches_per_side - WINDOW))
    return [(r, c) for r in starts for c in starts]


class CellProbe(nn.Module):
    """Per cell, the patch tokens of its window concatenated, then one Linear per attribute shared by the cells.

    Linear in the tokens: as a probe of a frozen ViT it measures what the tokens hold, and as the training head of
    this stage it leaves the work of resolving shapes to the ViT.
    """

    def __init__(self, width: int, patches_per_side: int):
        super().__init__()
        self.side = patches_per_side
        self.windows = cell_windows(patches_per_side)
        self.heads = nn.ModuleList([nn.Linear(WINDOW * WINDOW * width, len(v)) for v in ATTRIBUTES.values()])

    def forward(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        grid = hidden[:, 1:].reshape(hidden.shape[0], self.side, self.side, -1)  # CLS first
        cells = torch.stack([grid[:, r : r + WINDOW, c : c + WINDOW].flatten(1) for r, c in self.windows], 1)
        return [head(cells) for head in self.heads]


class SceneHead(nn.Module):
    """Every cell's attributes from the CLS token (last hidden state, as `vision_proj` reads it): one Linear per
    attribute to GRID x GRID x classes logits. Trains CLS to hold the whole scene, as image-text retrieval needs."""

    def __init__(self, width: int):
        super().__init__()
        self.heads = nn.ModuleList([nn.Linear(width, GRID * GRID * len(v)) for v in ATTRIBUTES.values()])

    def forward(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        cls = hidden[:, 0]
        return [head(cls).reshape(len(cls), GRID * GRID, -1) for head in self.heads]


def loss_of(logits: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    return sum(nn.functional.cross_entropy(x.flatten(0, 1), targets[..., k].flatten()) for k, x in enumerate(logits))


@torch.no_grad()
def accuracy(
    vision: nn.Module, probe: nn.Module, pixels: torch.Tensor, targets: torch.Tensor, prefix: str = ""
) -> dict[str, float]:
    """Per attribute, % of the OCCUPIED cells classified right (an empty cell is easy and would inflate it)."""
    vision.eval()
    logits = [probe(vision(pixel_values=pixels[i : i + 100]).last_hidden_state) for i in range(0, len(pixels), 100)]
    occupied = targets[..., 0] > 0
    out = {}
    for k, name in enumerate(ATTRIBUTES):
        pred = torch.cat([x[k] for x in logits]).argmax(-1)
        out[prefix + name] = round(100.0 * (pred == targets[..., k])[occupied].float().mean().item(), 2)
    return out


def fit(
    vision: nn.Module,
    probe: CellProbe,
    data: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    recipe: VisionRecipe,
    seed: int,
    train_vision: bool = True,
    log: Callable[[str], None] | None = None,
    scene: SceneHead | None = None,
) -> dict[str, float]:
    """Train the probe, the scene head if given (its accuracies prefixed `cls_`) and the ViT when `train_vision`
    with AdamW and a one-cycle schedule; test accuracies."""
    pixels, targets = data
    heads = [probe] if scene is None else [probe, scene]
    params = [p for h in heads for p in h.parameters()] + (list(vision.parameters()) if train_vision else [])
    for p in vision.parameters():
        p.requires_grad_(train_vision)
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    per_epoch = len(pixels) // recipe.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=recipe.lr, total_steps=recipe.epochs * per_epoch, pct_start=recipe.warmup
    )
    order = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for epoch in range(recipe.epochs):
        vision.train(train_vision)
        perm = torch.randperm(len(pixels), generator=order)
        total = 0.0
        for b in range(per_epoch):
            idx = perm[b * recipe.batch : (b + 1) * recipe.batch]
            hidden = vision(pixel_values=pixels[idx]).last_hidden_state
            loss = sum(loss_of(head(hidden), targets[idx]) for head in heads)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        acc = accuracy(vision, probe, *test)
        if scene is not None:
            acc |= accuracy(vision, scene, *test, prefix="cls_")
        if log is not None:
            log(
                f"[vision] epoch {epoch + 1}/{recipe.epochs}: loss {total / per_epoch:.3f}, A test accuracy of "
                f"occupied cells {json.dumps(acc)}, {time.perf_counter() - t0:.0f} s"
            )
    return acc


def tiny_vision_model(seed: int):
    """The seeded tiny ViT of the scenes backbones (benchmarks/transfer/pretrain.py's TINY_SIZES)."""
    from transformers.models.blip.modeling_blip import BlipVisionModel

    from unitrans_ds.config.schema import TinyModelConfig
    from unitrans_ds.models.tiny import tiny_blip_config

    from .pretrain import TINY_SIZES

    config = tiny_blip_config(TinyModelConfig(**TINY_SIZES), image_size=64).vision_config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BlipVisionModel(config)


def train_vision_stage(out: str | Path, recipe: VisionRecipe, seed: int = 0, data_seed: int = 0) -> Path:
    """Run the stage and write `<out>/vision_model.safetensors` (BlipVisionModel state) and `vision_stage.json`.

    A finished stage of the same recipe and seeds is reused. `data_seed` is the scenes generator's seed
    (`make_scenes.sh`'s SEED, recorded in each split's manifest.json).
    """
    from safetensors.torch import save_file

    out = Path(out)
    record_path = out / "vision_stage.json"
    settings = {"recipe": asdict(recipe), "seed": seed, "data_seed": data_seed}
    if record_path.is_file() and {k: json.loads(record_path.read_text()).get(k) for k in settings} == settings:
        print(f"[vision] done before ({out}), reused", flush=True)
        return out / "vision_model.safetensors"
    t0 = time.perf_counter()
    data = scene_images(data_seed, "train", recipe.images)
    test = scene_images(data_seed, "test", 500)
    print(f"[vision] {recipe.images} train and 500 test images drawn in {time.perf_counter() - t0:.0f} s", flush=True)
    torch.manual_seed(seed)
    vision = tiny_vision_model(seed)
    probe = CellProbe(vision.config.hidden_size, vision.config.image_size // vision.config.patch_size)
    scene = SceneHead(vision.config.hidden_size) if recipe.scene_head else None
    acc = fit(vision, probe, data, test, recipe, seed, log=partial(print, flush=True), scene=scene)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in vision.state_dict().items()}
    save_file(state, str(out / "vision_model.safetensors"), metadata={"format": "pt"})
    record = {**settings, "test_accuracy": acc, "seconds": round(time.perf_counter() - t0, 1)}
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return out / "vision_model.safetensors"


def with_vision(init: str, task: str, vision_file: str | Path, out: str | Path, seed: int = 0) -> Path:
    """A save_pretrained folder of `task`'s BLIP class: `init` (`tiny`: seeded random, or a folder) with its
    `vision_model` replaced by the stage's ViT. Everything else (texts, heads, tokenizer) is `init`'s."""
    from safetensors.torch import load_file

    from unitrans_ds.adapters import save_merged_pretrained
    from unitrans_ds.config.schema import ModelConfig, TinyModelConfig
    from unitrans_ds.models.build import load_backbone

    from .pretrain import TINY_SIZES

    cfg = ModelConfig(init_from=init, image_size=64, tiny=TinyModelConfig(**TINY_SIZES))
    backbone = load_backbone(cfg, task, seed)
    backbone.model.vision_model.load_state_dict(load_file(str(vision_file)), strict=True)
    return save_merged_pretrained(backbone.model, out, tokenizer=backbone.tokenizer)


def probe_frozen(folder: str | Path, task: str, recipe: VisionRecipe, seed: int = 0, data_seed: int = 0) -> dict:
    """Linear-probe test accuracies of a saved backbone's frozen ViT (what its patch tokens hold per cell)."""
    from unitrans_ds.config.schema import ModelConfig
    from unitrans_ds.models.build import load_backbone

    if str(folder) == "tiny":  # the seeded random ViT: what a ViT's tokens hold before any training
        vision = tiny_vision_model(seed)
    else:
        vision = load_backbone(ModelConfig(init_from=str(folder), image_size=64), task, seed).model.vision_model.float()
    data, test = scene_images(data_seed, "train", recipe.images), scene_images(data_seed, "test", 500)
    torch.manual_seed(seed)
    probe = CellProbe(vision.config.hidden_size, vision.config.image_size // vision.config.patch_size)
    return fit(vision, probe, data, test, recipe, seed, train_vision=False, log=partial(print, flush=True))


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog="python -m benchmarks.transfer.vision_stage",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = VisionRecipe()
    p.add_argument("--images", type=int, default=d.images, help="domain A train images (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="passes over them (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="peak lr of the one-cycle schedule (default: %(default)s)")
    p.add_argument(
        "--no_scene_head",
        dest="scene_head",
        action="store_false",
        help="train the cell head only, not also the CLS token to name every cell (SceneHead)",
    )
    p.add_argument("--seed", type=int, default=0, help="init and order seed (default: %(default)s)")
    p.add_argument("--data_seed", type=int, default=0, help="the scenes generator's seed (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--out", default="runs/pretrain/vision", help="where the ViT goes (default: %(default)s)")
    p.add_argument(
        "--probe",
        metavar="FOLDER",
        default=None,
        help="instead: linear-probe the frozen ViT of this BLIP folder (`tiny`: the seeded random ViT)",
    )
    p.add_argument("--probe_task", default="retrieval", help="the BLIP class of --probe's folder")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = VisionRecipe(images=args.images, epochs=args.epochs, lr=args.lr, scene_head=args.scene_head)
    if args.probe:
        acc = probe_frozen(args.probe, args.probe_task, recipe, args.seed, args.data_seed)
        print(f"[vision] linear probe of {args.probe}'s frozen ViT: {json.dumps(acc)}", flush=True)
        return 0
    path = train_vision_stage(args.out, recipe, args.seed, args.data_seed)
    print(f"[vision] ViT written to {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
