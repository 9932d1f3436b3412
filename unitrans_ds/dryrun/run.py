"""`launchers/train.py --config configs/X.yaml --dry_run`: a paper config end to end on its real architecture,
without downloads.

What it does, top to bottom:
1. loads the config as a real run would (YAML + overrides), so its sizes are the ones checked;
2. writes a handful of samples in the data set's native annotation format (`native.py`) and shards them with the
   very `make_shards` commands of docs/reproducing.md;
3. builds the architecture of the checkpoint `model.init_from` names (`random:<name>`, shapes from
   `models/known_checkpoints.py`) with random weights and a BLIP-shaped offline tokenizer (BERT's special ids,
   [DEC]=30522, [ENC]=30523);
4. trains two optimizer steps of `micro_batch` samples through the real trainer and DeepSpeed engine, then runs
   the one evaluation the config would run at the end (validation, else test) with the config's image size,
   frame count and inference settings (the evaluators clip k_test to the candidates the data has);
5. prints and writes (`<work>/dry_run.json`) the step times, the peak memory it saw and the activation estimate
   of `dryrun/memory.py` for the config's real micro batch.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import time
from pathlib import Path

import torch
from transformers import BertTokenizer

from ..config import Config, ConfigError, load_config
from ..make_shards import main as make_shards_main
from ..models.build import ensure_blip_tokens
from ..models.known_checkpoints import KNOWN_CHECKPOINTS, RANDOM_PREFIX, architecture, known_checkpoint
from ..models.tiny import SPECIAL_TOKENS, demo_vocab_path
from .memory import estimate_activation_bytes
from .native import SHARD_COMMANDS, WRITERS

log = logging.getLogger("unitrans_ds.dryrun")
BERT_VOCAB = 30522  # bert-base-uncased; BLIP adds [DEC] and [ENC] after it


def blip_shaped_tokenizer(folder: Path) -> Path:
    """An offline stand-in for BLIP's tokenizer with the same ids where they matter: [PAD] 0, [UNK] 100,
    [CLS] 101, [SEP] 102, [MASK] 103, 30522 entries, then [DEC] 30522 and [ENC] 30523. Its words are the demo
    vocabulary's (WordPiece spells any caption with them); the rest are [unusedN] fillers, as in BERT's file."""
    words = [w for w in demo_vocab_path().read_text().split("\n") if w and w not in SPECIAL_TOKENS]
    vocab = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    vocab += [f"[unused{i}]" for i in range(99, 99 + BERT_VOCAB - len(vocab))]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = ensure_blip_tokens(BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True), BERT_VOCAB + 2)
    tok.save_pretrained(folder)
    return folder


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def write_shards(cfg: Config, work: Path) -> dict[str, str]:
    """Native samples for `data.dataset` under `<work>/raw`, sharded into `<work>/shards/<split>`."""
    dataset = cfg.data.dataset
    if dataset not in WRITERS:
        raise ConfigError(
            f"data.dataset={dataset!r}: the dry run writes samples for {', '.join(sorted(WRITERS))} "
            "(the paper benchmarks); use one of those configs"
        )
    ann, media = work / "raw" / "annotations", work / "raw" / "media"
    WRITERS[dataset](ann, media)
    out: dict[str, str] = {}
    for cmd in SHARD_COMMANDS[dataset]:
        folder = work / "shards" / cmd.split
        argv = cmd.argv(str(ann), str(media), str(folder))
        print(f"[dry-run] python -m unitrans_ds.make_shards {' '.join(argv)}", flush=True)
        if make_shards_main([*argv, "--no_progress", "--workers", "1", "--strict"]) != 0:
            raise ConfigError(f"make_shards failed for the {cmd.split} split of {dataset} (see the error above)")
        out[cmd.split] = str(folder)
    return out


def dry_run_overrides(cfg: Config, shards: dict[str, str], work: Path, micro_batch: int, world: int) -> list[str]:
    """Dotted overrides that turn the real config into its dry run (what changes, and only that)."""
    eval_split = "val" if cfg.data.val_shards else "test"  # the one evaluation the config runs at the end
    out = [
        f"data.train_shards={shards['train']}",
        f"data.val_shards={shards['val'] if eval_split == 'val' else 'null'}",
        f"data.test_shards={shards['test'] if eval_split == 'test' else 'null'}",
        "data.num_workers=0",  # one shard per split: no worker would get a second
        f"train.micro_batch_size={micro_batch}",
        f"train.global_batch_size={micro_batch * world}",
        "train.max_steps=2",
        "train.eval_every=0",
        "train.save_every=0",
        "train.log_every=1",
        "train.zero_shot_eval=false",
        f"train.output_dir={work / 'run'}",
        "tracking.enabled=false",  # metrics still go to <work>/run/metrics.jsonl
    ]
    if cfg.model.init_from != "tiny":
        out += [f"model.init_from={RANDOM_PREFIX}{cfg.model.init_from}", f"model.tokenizer={work / 'tokenizer'}"]
    return out


def _measured(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    metrics: dict[str, list[float]] = {}
    for row in rows:
        for k, v in row.get("metrics", row).items():
            if isinstance(v, (int, float)):
                metrics.setdefault(k, []).append(float(v))
    evals = metrics.get("val_info/eval_seconds") or metrics.get("test_info/eval_seconds") or [float("nan")]
    return {
        "step_seconds": metrics.get("train/step_time_s", []),
        "peak_memory_mib_after_steps": max(metrics.get("train/peak_memory_mib", [float("nan")])),
        "eval_seconds": evals[-1],
        "losses": metrics.get("train/loss", []),
    }


def estimate(cfg: Config) -> dict:
    """Activation estimate (GiB) for the config's real micro batch, fp32 and bf16, on its named architecture."""
    blip = architecture(cfg.model.init_from) if cfg.model.init_from != "tiny" else None
    if blip is None:
        from ..models.tiny import tiny_blip_config

        blip = tiny_blip_config(cfg.model.tiny, image_size=cfg.model.image_size)
    return {
        f"activations_{name}_gib": sum(estimate_activation_bytes(cfg, blip, size).values()) / 2**30
        for name, size in (("fp32", 4), ("bf16", 2))
    }


def dry_run(config: str | None, overrides: list[str], ds_config: str, micro_batch: int = 2, work: str | None = None):
    """Run the dry run of `config` (see the module docstring); returns the summary dict it also writes."""
    real = load_config(config, overrides)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world != 1:  # every rank would write the same samples and shards at once
        raise ConfigError(
            f"--dry_run runs on one process, not {world}: start it with `python launchers/train.py --config ... "
            "--dry_run`, not with the deepspeed launcher"
        )
    if real.model.init_from != "tiny" and known_checkpoint(real.model.init_from) is None:
        raise ConfigError(
            f"model.init_from={real.model.init_from!r}: the dry run knows the architectures of the original BLIP "
            f"checkpoints ({', '.join(sorted(KNOWN_CHECKPOINTS))}) and `tiny`; the HF hub BLIP-base models have the same layers "
            "(saved at 384 px), so dry-run with the config's default model.init_from"
        )
    name = Path(config).stem if config else "default"
    work_dir = Path(work or f"runs/dry_run/{name}")
    shutil.rmtree(work_dir, ignore_errors=True)
    return _run(real, config, overrides, ds_config, micro_batch, world, work_dir)


def _run(
    real: Config, config: str | None, overrides: list[str], ds_config: str, micro_batch: int, world: int, work_dir: Path
) -> dict:
    """The dry run's work, once its inputs are checked (see `dry_run`)."""
    from ..engine.trainer import Trainer

    shards = write_shards(real, work_dir)
    blip_shaped_tokenizer(work_dir / "tokenizer")
    cfg = load_config(config, [*overrides, *dry_run_overrides(real, shards, work_dir, micro_batch, world)])

    t0 = time.perf_counter()
    trainer = Trainer(cfg, ds_config)
    build_s = time.perf_counter() - t0
    rss_built = _peak_rss_mib()
    trainer.run()
    total_s = time.perf_counter() - t0
    summary = {
        "config": config,
        "init_from": real.model.init_from,
        "architecture_image_size": trainer.model.config.vision_config.image_size,
        "image_size": cfg.model.image_size,
        "frames": cfg.data.num_frames if cfg.video else None,
        "task": cfg.task + ("-video" if cfg.video else ""),
        "dry_run_micro_batch": micro_batch,
        "world_size": world,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "build_seconds": build_s,
        "peak_rss_mib_after_build": rss_built,
        **_measured(work_dir / "run"),
        "peak_rss_mib_end": _peak_rss_mib(),
        "total_seconds": total_s,
        "real_micro_batch": real.train.micro_batch_size,
        **estimate(real),
        "dry_run_batch_estimate": estimate(cfg),
    }
    if trainer.rank == 0:
        (work_dir / "dry_run.json").write_text(json.dumps(summary, indent=2))
        _print(summary)
    return summary


def _print(s: dict) -> None:
    steps = ", ".join(f"{t:.1f}" for t in s["step_seconds"])
    frames = f" x {s['frames']} frames" if s["frames"] else ""
    print(
        f"[dry-run] {s['config']}: {s['task']} on {s['init_from']} (architecture of {s['architecture_image_size']} px, "
        f"run at {s['image_size']} px{frames}), micro batch {s['dry_run_micro_batch']}, {s['device']}\n"
        f"[dry-run] build {s['build_seconds']:.1f} s; step times {steps} s; evaluation {s['eval_seconds']:.1f} s; "
        f"peak memory {s['peak_rss_mib_end']:,.0f} MiB (resident set, whole process)\n"
        f"[dry-run] estimated activations for the real micro batch of {s['real_micro_batch']}: "
        f"{s['activations_bf16_gib']:.2f} GiB bf16 / {s['activations_fp32_gib']:.2f} GiB fp32 per rank",
        flush=True,
    )
