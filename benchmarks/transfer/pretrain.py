"""Pretrain the tiny BLIP backbones: full training on domain A of `scenes`, one model per task class.

    python -m benchmarks.transfer.pretrain [--tasks retrieval captioning vqa] [--out pretrained/scenes] [--epochs N]
    python -m benchmarks.transfer.pretrain --tasks vqa --continue_from pretrained/scenes/tiny-blip-vqa \
        --more_stages 2 --out runs/more/vqa    # more stages of the task's last recipe stage from a saved backbone
    python -m benchmarks.transfer.pretrain --tasks retrieval --continue_from pretrained/scenes/tiny-blip-retrieval \
        --from_stage 3 --out runs/next/retrieval    # the recipe's stages 3.. from a backbone of its stages 1-2

Each task class (`BlipForImageTextRetrieval`, `BlipForConditionalGeneration`, `BlipForQuestionAnswering`) is
trained with `method.name=full` on `<shards>/image_a/train` by the project's own `Trainer` (in this process, one
rank), then the whole backbone and the demo tokenizer are written with `save_pretrained` to
`<out>/tiny-blip-<task>/`, which `model.init_from` accepts. The weights are stored in fp16 (the loader reads them
back as fp32) so that the three folders fit in the repository's budget.

First, the vision stage (`vision_stage.py`, into `<run_root>/vision/`, reused when done) trains the tiny ViT to name
what stands in each grid cell; the recipes start from that ViT and keep it locked (`Recipe.vision`,
`Recipe.freeze`), as BLIP starts from an ImageNet ViT. `--no_vision_stage` starts each from its own init.

Determinism: a fixed seed drives the init, the data order and dropout, and `train.cpu_threads` pins the math to
`--threads` threads, so a rerun gives bit-identical tensors on any machine. `pretrain.json` beside the weights
records the recipe, the time taken and sanity numbers (zero-shot on domain A test and domain B val) unless
`--no_sanity`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml

from unitrans_ds.cli import ArgumentParser
from unitrans_ds.config import Config, load_config
from unitrans_ds.engine.distributed import shutdown_distributed
from unitrans_ds.tasks.registry import TASKS

from .vision_stage import VisionRecipe, train_vision_stage, with_vision

#: the tiny sizes of every demo backbone: ~1.9M (retrieval, captioning) and ~3.1M (VQA) parameters
TINY_SIZES = {
    "vision_width": 128,
    "vision_layers": 4,
    "vision_heads": 4,
    "patch_size": 8,  # 8x8 patches of a 64 px image: fine enough for the small shapes and the 3x3 grid
    "text_width": 128,
    "text_layers": 4,
    "text_heads": 4,
    "intermediate_mult": 4,
    "embed_dim": 64,
    "max_position_embeddings": 64,
}


@dataclass(frozen=True)
class Recipe:
    """How one task class is pretrained. `epochs` count passes over the task's items (captions or questions)."""

    epochs: int
    lr: float
    batch: int
    warmup_steps: int = 50
    # BLIP pretrains its ITC temperature at the model's lr; adaptation then uses `optim.temperature_lr`'s default
    temperature_lr: float | None = None  # None = lr
    # where the weights start: `tiny` (a seeded random init of TINY_SIZES) or a save_pretrained folder; `{out}`
    # stands for the `--out` folder (a backbone pretrained before this one), `{prev}` for the previous stage's
    init_from: str = "tiny"
    # `captioning`: `init_from` holds a captioning model, converted first by `vqa_from_captioning`
    init_class: str | None = None
    # replace init_from's ViT by the vision stage's (vision_stage.py) before training: BLIP's ViT starts from
    # ImageNet, not from random weights
    vision: bool = False
    # module-name regexes kept frozen (`method.freeze`): `vision_model` trains the rest around a locked ViT, so
    # that full training at the text side's lr does not wash out what the vision stage learned
    freeze: tuple[str, ...] = ()
    # a next stage, trained from this one's output (a warm restart of the schedule); only the last is released
    then: Recipe | None = None


def more_stages(task: str, start: str | Path, n: int) -> list[Recipe]:
    """`n` more stages of `task`'s last recipe stage (its lr, batch, epochs, warmup and lock), the first from the
    saved backbone `start`, each next from the one before: what more training of a released backbone gives."""
    if n < 1:
        raise ValueError(f"more_stages needs n >= 1, got {n}")
    last = stages(RECIPES[task])[-1]
    first = dataclasses.replace(last, init_from=str(start), init_class=None, vision=False)
    return [first] + [dataclasses.replace(first, init_from="{prev}") for _ in range(n - 1)]


def chain_from(task: str, start: str | Path, first: int) -> list[Recipe]:
    """`task`'s recipe stages `first`.. (counted from 1), the first of them from the saved backbone `start`, which
    holds what stage `first - 1` made (a released backbone whose chain has since grown): the rest of the chain
    without rerunning its beginning."""
    chain = stages(RECIPES[task])
    if not 2 <= first <= len(chain):
        raise ValueError(f"the {task} recipe has stages 1..{len(chain)}: --from_stage must be in 2..{len(chain)}")
    head = dataclasses.replace(chain[first - 1], init_from=str(start), init_class=None, vision=False)
    return [head] + chain[first:]


def stages(recipe: Recipe) -> list[Recipe]:
    """The recipe's stages in order, each without its `then`."""
    out: list[Recipe] = []
    while recipe is not None:
        out.append(dataclasses.replace(recipe, then=None))
        recipe = recipe.then
    return out


def _chain(*parts: Recipe) -> Recipe:
    """The stages `parts` in a row, each one's `then` the next (a part may carry a chain of its own)."""
    out = None
    for part in reversed(parts):
        for stage in reversed(stages(part)):
            out = dataclasses.replace(stage, then=out)
    return out


def _again(stage: Recipe, times: int) -> Recipe:
    """`stage` `times` times in a row, each restarting the schedule from the one before (`stage` starts from
    `{prev}`)."""
    out = None
    for _ in range(times):
        out = dataclasses.replace(stage, then=out)
    return out


_VQA_NEXT = Recipe(epochs=4, lr=5e-4, batch=32, warmup_steps=100, init_from="{prev}", freeze=("vision_model",))
_RET_NEXT = Recipe(epochs=4, lr=5e-4, batch=32, warmup_steps=50, init_from="{prev}", freeze=("vision_model",))


def _vit_top_trains(*locked: str) -> Recipe:
    """A retrieval stage in which the ViT's patch embedding and the `locked` layers (a regex of layer numbers)
    stay locked and the layers above them and the post-layernorm train with the rest."""
    return dataclasses.replace(
        _RET_NEXT, freeze=(r"vision_model\.embeddings", *(rf"vision_model\.encoder\.layers\.{k}" for k in locked))
    )


RECIPES: dict[str, Recipe] = {
    # Every backbone starts from the vision stage's ViT (vision_stage.py; BLIP's starts from ImageNet) and keeps it
    # locked: trained at the text side's lr it washed out (pretrained/README.md).
    # 12000 captions per epoch on image_a/train (3000 images x 4), 24000 questions (8 per image)
    # Retrieval's text side starts from the retrieval model pretrained on `shapes` A (the first demo's,
    # pretrained/shapes/tiny-blip-retrieval): from a random init at lr 1e-3 ITC sat at its chance value for 225
    # steps and then oscillated, while this start learned from the first steps at lr 5e-4 (ITC 3.47 -> 2.52 in 250).
    # ITC reads the image from the CLS token, which the vision stage's scene head trains; each next stage restarts
    # the schedule from the one before (the loss was still falling after each). With the ViT locked, text-to-image
    # R@1 on A test rose by 2 to 4 points a stage and ITC's stayed at 34 (stages 3 to 5): the CLS token of the
    # locked ViT holds too little of the shapes (pretrained/README.md). So the later stages train the ViT's top
    # layers too (its last in stage 5, its last two in stage 6, all but its first in stage 7), at the same lr;
    # B val stays near zero. Stage 7 with the last two layers again reached 75.4 / 50.55 R@1, this one 74.8 / 52.2.
    "retrieval": _chain(
        Recipe(
            epochs=4,
            lr=5e-4,
            batch=32,
            warmup_steps=50,
            init_from="pretrained/shapes/tiny-blip-retrieval",
            vision=True,
            freeze=("vision_model",),
        ),
        _again(_RET_NEXT, 3),
        _vit_top_trains("[0-2]"),
        _vit_top_trains("[0-1]"),
        _vit_top_trains("0"),
    ),
    "captioning": Recipe(epochs=4, lr=1e-3, batch=32, warmup_steps=100, vision=True, freeze=("vision_model",)),
    # VQA starts from the captioning model, as BLIP's VQA starts from a pretrained BLIP (vision_model and
    # text_decoder as they are; the question encoder from the decoder's BERT, whose cross-attention already reads
    # the image): from a random init (2 epochs, lr 1e-3) the loss sat at 2.94-2.99 from step 250 to the end and
    # the model answered priors only (35.7% on A test; yes/no 53, number 39).
    # Three more stages of 4 epochs each restart the schedule: A test accuracy 55.5 -> 66.4 -> 69.2 -> 73.4 after
    # stages 1-4 (pretrained/README.md); the yes/no types, which match an attribute named in the question against
    # the image, sit at their constant answers' level until the fourth.
    "vqa": Recipe(
        epochs=2,
        lr=5e-4,
        batch=32,
        warmup_steps=100,
        init_from="{out}/tiny-blip-captioning",
        init_class="captioning",
        freeze=("vision_model",),
        then=_again(_VQA_NEXT, 3),
    ),
}


def folder_name(task: str) -> str:
    """`tiny-blip-<task>`: the folder under `pretrained/` holding the task's backbone."""
    return f"tiny-blip-{task}"


def pretrain_config(
    task: str,
    recipe: Recipe,
    train_shards: str | Path,
    run_dir: str | Path,
    seed: int = 0,
    track: bool = False,
    threads: int = 1,
) -> Config:
    """The training config of one pretraining run: full training from a seeded tiny init, no evaluation."""
    overrides = [
        f"task={task}",
        f"model.init_from={recipe.init_from}",
        "model.image_size=64",
        *(f"model.tiny.{k}={v}" for k, v in TINY_SIZES.items()),
        "method.name=full",
        f"method.freeze={json.dumps(list(recipe.freeze))}",
        f"data.train_shards={train_shards}",
        "data.val_shards=null",
        "data.test_shards=null",
        "data.dataset=scenes-a",
        # scenes texts name colours, say left/right and name positions and counts: no colour ops, no flips, no
        # random crops (the committed backbones were trained before this line, with BLIP's crops: pretrained/README.md)
        "data.randaugment=false",
        "data.hflip=false",
        "data.min_scale=1.0",
        "data.num_workers=0",
        f"optim.lr={recipe.lr}",
        f"optim.temperature_lr={recipe.temperature_lr or recipe.lr}",
        f"optim.warmup_steps={recipe.warmup_steps}",
        "optim.min_lr_ratio=0.05",
        f"train.epochs={recipe.epochs}",
        f"train.global_batch_size={recipe.batch}",
        f"train.micro_batch_size={recipe.batch}",
        "train.precision=fp32",
        f"train.seed={seed}",
        f"train.cpu_threads={threads}",
        "train.zero_shot_eval=false",
        "train.log_every=25",
        "train.save_every=250",  # resumable: a rerun of the command continues from the last checkpoint
        "train.keep_last=1",
        f"train.output_dir={run_dir}",
        f"tracking.enabled={'true' if track else 'false'}",
        "tracking.experiment=unitrans-pretrain",
        f"tracking.run_name=pretrain-{task}-scenes-a",
    ]
    return load_config(None, overrides)


@torch.no_grad()
def vqa_from_captioning(captioning: str | Path, out: str | Path) -> Path:
    """A `BlipForQuestionAnswering` folder made from a `BlipForConditionalGeneration` one: `vision_model` and
    `text_decoder` copied, the question encoder (`text_encoder`) from the decoder's BERT (`text_decoder.bert`:
    the same layers, cross-attention included; only causal masking differs), plus the tokenizer and processor
    files. Every VQA weight must come from the captioning model, else `ValueError`."""
    from safetensors.torch import load_file
    from transformers import BlipConfig, BlipForQuestionAnswering

    src, out = Path(captioning), Path(out)
    caption = {k: v.float() for k, v in load_file(str(src / "model.safetensors")).items()}
    state = dict(caption)
    state.update(
        {
            "text_encoder." + k[len("text_decoder.bert.") :]: v
            for k, v in caption.items()
            if k.startswith("text_decoder.bert.")
        }
    )
    model = BlipForQuestionAnswering(BlipConfig.from_pretrained(src))
    result = model.load_state_dict(state, strict=False)
    tied = getattr(model, "_tied_weights_keys", None) or {}
    missing = [k for k in result.missing_keys if k not in tied]
    if missing:
        raise ValueError(f"{src} lacks {len(missing)} weights of BlipForQuestionAnswering: {missing[:10]}")
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():  # tokenizer and processor files; the weights and config are written below
        if f.is_file() and f.name not in ("model.safetensors", "config.json", "pretrain.json"):
            shutil.copy2(f, out / f.name)
    model.save_pretrained(out)
    return out


@torch.no_grad()
def save_backbone(model: torch.nn.Module, tokenizer, out_dir: str | Path, half: bool = True) -> Path:
    """Write a fully trained model (prepared with `method.name=full`) as a plain HF folder, weights in fp16.

    The adapter state (`model.unitrans`, i.e. the ITC temperature) is not part of BLIP and is dropped by
    `save_merged_pretrained`; adaptation runs start from the default temperature again.
    """
    from safetensors.torch import load_file, save_file

    from unitrans_ds.adapters import save_merged_pretrained

    out = save_merged_pretrained(model, out_dir, tokenizer=tokenizer)
    if half:
        weights = out / "model.safetensors"
        tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(weights)).items()}
        save_file(tensors, str(weights), metadata={"format": "pt"})
    return out


def _last_train_loss(run_dir: Path) -> float:
    """The last logged `train/loss` of a run (from its `metrics.jsonl`), NaN when none was logged."""
    path = run_dir / "metrics.jsonl"
    loss = math.nan
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if "train/loss" in row:
                loss = float(row["train/loss"])
    return loss


def _resumable(run_dir: Path, cfg: Config) -> bool:
    """The run folder holds a checkpoint of this very config (an interrupted run of the same recipe)."""
    from unitrans_ds.config import to_dict
    from unitrans_ds.engine.checkpoint import latest_tag

    saved = run_dir / "config.yaml"
    if not saved.is_file() or latest_tag(run_dir / "checkpoints") is None:
        return False

    return yaml.safe_load(saved.read_text()) == yaml.safe_load(yaml.safe_dump(to_dict(cfg)))


def pretrain_task(
    task: str,
    out_root: str | Path,
    recipe: Recipe,
    shards_root: str | Path = "shards/scenes",
    ds_config: str = "ds_configs/zero0.json",
    seed: int = 0,
    run_root: str | Path = "runs/pretrain",
    track: bool = False,
    threads: int = 1,
    run_name: str | None = None,
    prev: str | Path | None = None,
    models_root: str | Path | None = None,
    vision_file: str | Path | None = None,
) -> dict:
    """Full training of the `task` class on domain A, then `save_pretrained` into `<out_root>/tiny-blip-<task>/`.

    Returns the record written to `pretrain.json` (recipe, sizes, steps, seconds, last training loss).
    """
    from unitrans_ds.engine.trainer import Trainer

    run_dir = Path(run_root) / (run_name or task)
    # `{out}`: the released backbones' folder (--out), also for an earlier stage that writes elsewhere
    init = recipe.init_from.format(out=models_root or out_root, prev=prev)
    if recipe.init_class == "captioning" and task == "vqa":  # converted beside the run folder, not inside it
        init = str(vqa_from_captioning(init, Path(run_root) / f"{task}_init"))
    elif recipe.init_class is not None:
        raise ValueError(f"no conversion from {recipe.init_class} to {task}")
    if recipe.vision:
        if vision_file is None:
            raise ValueError(f"the {task} recipe starts from the vision stage's ViT: pass vision_file")
        init = str(with_vision(init, task, vision_file, Path(run_root) / f"{run_name or task}_init", seed))
    given, recipe = recipe, dataclasses.replace(recipe, init_from=init)
    cfg = pretrain_config(task, recipe, Path(shards_root) / "image_a" / "train", run_dir, seed, track, threads)
    resume = _resumable(run_dir, cfg)
    if not resume and run_dir.is_dir():  # our own scratch folder of another recipe: its files would mix in
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, ds_config, resume="auto" if resume else None)
    result = trainer.run()
    seconds = time.perf_counter() - t0
    if result.state.step < trainer.total_steps:  # stopped by SIGTERM: a half-trained backbone is not a release
        raise RuntimeError(f"pretraining {task} stopped at step {result.state.step} of {trainer.total_steps}")
    out = save_backbone(trainer.model, trainer.tokenizer, Path(out_root) / folder_name(task))
    record = {
        "task": task,
        "data": str(Path(shards_root) / "image_a" / "train"),
        "recipe": asdict(given),
        "tiny": TINY_SIZES,
        "seed": seed,
        "steps": result.state.step,
        "train_seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "last_train_loss": round(_last_train_loss(run_dir), 4),
        "parameters": sum(p.numel() for n, p in trainer.model.named_parameters() if not n.startswith("unitrans.")),
    }
    (out / "pretrain.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def sanity_check(
    folder: str | Path, task: str, shards_root: str | Path = "shards/scenes", out_dir: str | Path = "runs/pretrain"
) -> dict[str, dict]:
    """Zero-shot metrics of a saved backbone on domain A test (what it learned: issue 10's bar) and domain B val
    (the gap adaptation must close), evaluated as the benchmark evaluates."""
    from .suite import TASKS
    from .zero_shot import evaluate_backbone

    overrides = list(next(t.overrides for t in TASKS.values() if t.task == task and not t.video))
    out = {}
    for domain, split in (("a", "test"), ("b", "val")):
        folder_split = Path(shards_root) / f"image_{domain}" / split
        metrics = evaluate_backbone(
            folder, task, folder_split, overrides=overrides, out_dir=Path(out_dir) / f"sanity_{domain}"
        )
        out[f"{split}_{domain}"] = {k: round(v, 4) for k, v in metrics.items() if k != "eval_seconds"}
    return out


def _finished(folder: Path, recipe: Recipe) -> bool:
    """`folder` holds a backbone this very recipe released (an earlier stage of an interrupted chain)."""
    path = folder / "pretrain.json"
    # compared as JSON holds it (a tuple field reads back as a list)
    return path.is_file() and json.loads(path.read_text()).get("recipe") == json.loads(json.dumps(asdict(recipe)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(
        prog="python -m benchmarks.transfer.pretrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS), help="task classes to pretrain")
    p.add_argument(
        "--out", default="pretrained/scenes", help="folder that receives tiny-blip-<task>/ (default: %(default)s)"
    )
    p.add_argument(
        "--shards",
        default="shards/scenes",
        help="scenes shards root with image_a/ and image_b/ (./shards/make_scenes.sh)",
    )
    p.add_argument(
        "--epochs", type=int, default=None, help="override every recipe's and the vision stage's epochs (quick trials)"
    )
    p.add_argument("--seed", type=int, default=0, help="init / data order / dropout seed (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads; fixed for bit-identical reruns")
    p.add_argument("--ds_config", default="ds_configs/zero0.json", help="DeepSpeed JSON (one rank)")
    p.add_argument("--run_root", default="runs/pretrain", help="trainer run folders (logs, config)")
    p.add_argument("--track", action="store_true", help="log the runs to MLflow (experiment unitrans-pretrain)")
    p.add_argument(
        "--no_sanity",
        dest="sanity",
        action="store_false",
        help="skip the zero-shot eval on A test and B val after each stage",
    )
    p.add_argument(
        "--continue_from",
        default=None,
        metavar="FOLDER",
        help="instead of the recipe's chain, train --more_stages more stages of the task's last stage from this "
        "saved backbone (a tiny-blip-<task> folder); one task only",
    )
    p.add_argument(
        "--more_stages",
        type=int,
        default=None,
        help="repeats of the task's last recipe stage trained after --continue_from (default: 1)",
    )
    p.add_argument(
        "--from_stage",
        type=int,
        default=None,
        metavar="K",
        help="with --continue_from: train the recipe's stages K.. from that folder, which holds stage K-1's output "
        "(e.g. a released backbone whose recipe has grown since)",
    )
    p.add_argument(
        "--no_vision_stage",
        dest="vision_stage",
        action="store_false",
        help="start every recipe from its own init and train its ViT too (the recipes before the vision stage)",
    )
    args = p.parse_args(argv)
    if args.continue_from is not None:
        if len(args.tasks) != 1:
            p.error(f"--continue_from continues one backbone: give one task in --tasks, got {args.tasks}")
        if not (Path(args.continue_from) / "config.json").is_file():
            p.error(f"--continue_from {args.continue_from}: no config.json there (a save_pretrained folder)")
        if args.from_stage is not None and args.more_stages is not None:
            p.error("give --from_stage (the rest of the recipe) or --more_stages (repeats of its last stage), not both")
        if args.more_stages is not None and args.more_stages < 1:
            p.error(f"--more_stages must be >= 1, got {args.more_stages}")
        if args.from_stage is not None:
            try:  # the one place that knows a recipe's stages
                chain_from(args.tasks[0], args.continue_from, args.from_stage)
            except ValueError as e:
                p.error(str(e))
    elif args.from_stage is not None or args.more_stages is not None:
        p.error("--from_stage and --more_stages continue a saved backbone: give --continue_from FOLDER")
    return args


def data_seed(shards: str | Path) -> int:
    """The scenes generator's seed of `<shards>/image_a/train` (its manifest), which the vision stage redraws."""
    path = Path(shards) / "image_a" / "train" / "manifest.json"
    try:
        return int(json.loads(path.read_text())["args"]["seed"])
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise SystemExit(
            f"error: cannot read the scenes seed from {path} ({e}); build the shards with ./shards/make_scenes.sh"
        ) from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # bit-identical reruns: refuse (warn on) nondeterministic kernels
    torch.use_deterministic_algorithms(True, warn_only=True)
    total = time.perf_counter()
    vision_file = None
    continuing = args.continue_from is not None
    if not continuing and args.vision_stage and any(r.vision for t in args.tasks for r in stages(RECIPES[t])):
        recipe = VisionRecipe() if args.epochs is None else VisionRecipe(epochs=args.epochs)
        vision_file = train_vision_stage(Path(args.run_root) / "vision", recipe, args.seed, data_seed(args.shards))
    for task in args.tasks:
        if not continuing:
            chain = stages(RECIPES[task])
        elif args.from_stage is not None:
            chain = chain_from(task, args.continue_from, args.from_stage)
        else:
            chain = more_stages(task, args.continue_from, args.more_stages or 1)
        if not args.vision_stage:  # the lock only protects the stage's ViT: without it every ViT trains
            chain = [dataclasses.replace(r, vision=False, freeze=()) for r in chain]
        if args.epochs is not None:
            chain = [dataclasses.replace(r, epochs=args.epochs) for r in chain]
        prev = None
        for i, recipe in enumerate(chain):
            last = i == len(chain) - 1
            # only the last stage is released into --out; earlier ones stay beside their run folders
            # (continued stages have their own names: a chain's run folders of the same task stay apart)
            if args.from_stage is not None:  # not `<task>-stage<k>`: the chain's own stage k starts elsewhere
                name = f"{task}-from{args.from_stage}-stage{args.from_stage + i}"
            else:
                name = f"{task}-more{i + 1}" if continuing else task if last else f"{task}-stage{i + 1}"
            out = Path(args.out) if last else Path(args.run_root) / name / "release"
            if not last and _finished(out / folder_name(task), recipe):
                print(f"[pretrain] {name}: done before ({out / folder_name(task)}), reused", flush=True)
                prev = out / folder_name(task)
                continue
            print(f"[pretrain] {name}: {recipe} on {args.shards}/image_a/train", flush=True)
            record = pretrain_task(
                task, out, recipe, args.shards, args.ds_config, args.seed, args.run_root, args.track, args.threads,
                run_name=name, prev=prev, models_root=args.out, vision_file=vision_file,
            )  # fmt: skip
            prev = out / folder_name(task)
            if args.from_stage is not None:  # the recipe's numbering, not the continuation's
                record["stage"] = f"{args.from_stage + i} of {args.from_stage + len(chain) - 1}"
            elif len(chain) > 1:
                record["stage"] = f"{i + 1} of {len(chain)}"
            if args.sanity:  # every stage: what a stage adds is the evidence for keeping it
                record["sanity"] = sanity_check(prev, task, args.shards, Path(args.run_root) / name)
            (prev / "pretrain.json").write_text(json.dumps(record, indent=2) + "\n")
            print(f"[pretrain] {name}: {json.dumps(record)}", flush=True)
    print(f"[pretrain] all done in {time.perf_counter() - total:.0f} s; models in {args.out}/", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:  # after the last collective, on success, error and stop alike
        shutdown_distributed()
