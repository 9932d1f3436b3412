"""The shipped YAML configs: they load, follow the recipes of SPEC section 8, and document working commands."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from unitrans_ds.config import load_config
from unitrans_ds.engine.ds_config import resolve_ds_config
from unitrans_ds.make_shards import build_parser
from unitrans_ds.models.known_checkpoints import known_checkpoint

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ALL_YAMLS = sorted(CONFIGS.glob("*.yaml"))

# SPEC section 8: (task, video, image size, lr, epochs, micro batch, GPUs); k_test for retrieval
PAPER = {
    "coco_retrieval": ("retrieval", False, 384, 1e-5, 6, 32, 8),
    "flickr30k_retrieval": ("retrieval", False, 384, 1e-4, 4, 32, 8),
    "coco_captioning": ("captioning", False, 384, 1e-5, 5, 32, 8),
    "vqav2": ("vqa", False, 480, 2e-5, 10, 16, 8),
    "msrvtt_retrieval": ("retrieval", True, 224, 1e-4, 5, 8, 8),
    "didemo_retrieval": ("retrieval", True, 224, 1e-4, 5, 8, 8),
    "msrvtt_qa": ("vqa", True, 224, 1e-4, 5, 8, 8),
}
K_TEST = {"coco_retrieval": 256, "flickr30k_retrieval": 128}
DEMOS = {
    "demo_retrieval": ("retrieval", False),
    "demo_captioning": ("captioning", False),
    "demo_vqa": ("vqa", False),
    "demo_video_retrieval": ("retrieval", True),
    "demo_video_qa": ("vqa", True),
}


def test_every_expected_config_is_shipped():
    assert set(PAPER) | set(DEMOS) <= {p.stem for p in ALL_YAMLS}


@pytest.mark.parametrize("path", ALL_YAMLS, ids=lambda p: p.name)
def test_config_loads_and_validates(path):
    cfg = load_config(path)
    assert cfg.method.name == "unitrans"
    for shards in (cfg.data.train_shards, cfg.data.val_shards, cfg.data.test_shards):
        assert shards is None or re.fullmatch(r"shards/[\w/]+/(train|val|test)", shards), shards


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_follows_the_recipe(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    task, video, image_size, lr, epochs, micro, gpus = PAPER[name]
    assert (cfg.task, cfg.video, cfg.model.image_size) == (task, video, image_size)
    assert cfg.optim.lr == pytest.approx(lr) and cfg.train.epochs == epochs
    assert (cfg.train.micro_batch_size, cfg.train.global_batch_size) == (micro, micro * gpus)
    assert cfg.method.rank == 64
    # BLIP's training transform: random resized crop from half the area, flips, RandAugment
    assert (cfg.data.min_scale, cfg.data.hflip, cfg.data.randaugment) == (0.5, True, True)
    if video:
        assert (cfg.data.num_frames, cfg.data.max_words) == (8, 40)
    if task == "retrieval":
        assert cfg.eval.k_test == K_TEST.get(name, 128)
    if task == "vqa":
        assert (cfg.eval.vqa_inference, cfg.eval.vqa_k_test) == ("rank", 128)
    assert cfg.data.train_shards.startswith("shards/") and not cfg.data.train_shards.startswith("shards/demo/")
    # on 8 GPUs the global batch is one micro batch per GPU: no accumulation, as in the recipe
    assert resolve_ds_config("zero2", cfg, gpus, bf16_supported=True)["gradient_accumulation_steps"] == 1


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_starts_from_pretrained_only_blip_base(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    ckpt = known_checkpoint(cfg.model.init_from)
    assert ckpt is not None and ckpt.name == "model_base.pth", f"{name}: {cfg.model.init_from}"
    assert cfg.task in ckpt.tasks


@pytest.mark.parametrize("name", sorted(DEMOS))
def test_demo_config_runs_offline_on_the_demo_shards(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    task, video = DEMOS[name]
    backbone = "retrieval" if task == "retrieval" else task
    # the committed domain-A models, so an adapter from `make train` (the embedded default) fits these configs
    assert (cfg.task, cfg.video, cfg.model.init_from, cfg.model.image_size) == (
        task,
        video,
        f"pretrained/scenes/tiny-blip-{backbone}",
        64,
    )
    folder = "shards/demo/video_b" if video else "shards/demo/image_b"
    assert (cfg.data.train_shards, cfg.data.val_shards, cfg.data.test_shards) == tuple(
        f"{folder}/{split}" for split in ("train", "val", "test")
    )
    for world_size in (1, 2):  # `make train` and `make train-2ranks`, on CPU
        resolve_ds_config("zero2", cfg, world_size, bf16_supported=False)


def _documented_make_shards_commands(text: str) -> list[list[str]]:
    """`python -m unitrans_ds.make_shards ...` commands in the YAML's comments, continuation lines joined."""
    lines = [line[1:].strip() for line in text.splitlines() if line.startswith("#")]
    joined = re.sub(r"\\\s*\n\s*", " ", "\n".join(lines))
    commands = []
    for line in joined.splitlines():
        if line.startswith("python -m unitrans_ds.make_shards"):
            args = line.removeprefix("python -m unitrans_ds.make_shards").split("(")[0]
            commands.append(shlex.split(args))
    return commands


@pytest.mark.parametrize("path", ALL_YAMLS, ids=lambda p: p.name)
def test_documented_shard_commands_parse_and_build_the_configured_folders(path):
    cfg = load_config(path)
    commands = _documented_make_shards_commands(path.read_text())
    assert commands, f"{path.name} does not say how to build its shards"
    outs = set()
    for argv in commands:
        args = build_parser().parse_args(argv)  # argparse exits (a test failure) on a wrong flag or format
        outs.add(str(args.out))
    assert cfg.data.train_shards in outs
