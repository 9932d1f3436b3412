"""Evaluate a backbone as it is, without any training: the `frozen` method and the pretraining sanity check.

The trainer needs something to optimize, so `frozen` (zero-shot) runs go through here: build the backbone,
prepare it with `method.name=frozen` (nothing trains, the temperature sits at its default), wrap it in its task
class and call the evaluation runner on one split, exactly as the trainer evaluates the other methods.
"""

from __future__ import annotations

from pathlib import Path

from unitrans_ds.config import Config, load_config
from unitrans_ds.engine.distributed import init_distributed, pin_cpu_threads


def frozen_config(
    init_from: str | Path, task: str, split_dir: str | Path, video: bool = False, overrides: list[str] | None = None
) -> Config:
    """A config that evaluates `init_from` on `split_dir`; the VQA answer list comes from the sibling `train/`."""
    split = Path(split_dir)
    return load_config(
        None,
        [
            f"task={task}",
            f"video={'true' if video else 'false'}",
            f"model.init_from={init_from}",
            "method.name=frozen",
            f"data.train_shards={split.parent / 'train'}",
            f"data.val_shards={split}",
            "data.test_shards=null",
            "data.num_workers=0",
            "train.precision=fp32",
            *(overrides or []),
        ],
    )


def evaluate_config(cfg: Config, split_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, float]:
    """Metrics of the untrained (`frozen`) model of `cfg` on `split_dir`, one rank. `out_dir`: per-sample outputs."""
    from unitrans_ds.adapters import prepare_model
    from unitrans_ds.evaluation.runner import evaluate
    from unitrans_ds.models.build import load_backbone
    from unitrans_ds.tasks import build_task

    rank, world, _ = init_distributed()
    # as the trainer does: the numbers of a trained run's evaluation, and on a shared CPU two threads per process
    # made the ITM re-ranking 40x slower (0.17 against 7.5 pairs-batches/s) than one
    pin_cpu_threads(cfg.train.cpu_threads)
    backbone = load_backbone(cfg.model, cfg.task, seed=cfg.train.seed)
    prepare_model(backbone.model, cfg.method)
    task = build_task(cfg, backbone.model, backbone.tokenizer, rank, world)
    out = Path(out_dir) if out_dir is not None else Path(cfg.train.output_dir) / "eval" / Path(split_dir).name
    metrics = evaluate(task, cfg, split_dir, rank=rank, world_size=world, out_dir=out)
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def evaluate_backbone(
    init_from: str | Path,
    task: str,
    split_dir: str | Path,
    video: bool = False,
    overrides: list[str] | None = None,
    out_dir: str | Path | None = None,
) -> dict[str, float]:
    """Zero-shot metrics of the backbone `init_from` (a `save_pretrained` folder, `tiny`, ...) on `split_dir`."""
    cfg = frozen_config(init_from, task, split_dir, video, overrides)
    return evaluate_config(cfg, split_dir, out_dir)
