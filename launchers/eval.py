"""Evaluate a BLIP backbone with a saved adapter (or zero-shot) on a split, on one or many ranks.

    deepspeed launchers/eval.py --config CFG [--adapter DIR] [--split test|val] [--out DIR] [--mlflow] [key=value ...]
    python launchers/eval.py --config CFG ...          (one process)

The backbone comes from `model.*` of the config; `--adapter` is a folder written by training (`adapter_best/`,
`adapter_final/`) or `save_adapter`, and must fit that backbone. Without `--adapter` the config's method is
prepared at its initial state, which computes exactly the frozen model (zero-shot). The split is
`data.<split>_shards`. Writes `metrics.json`, the per-sample outputs of the task's evaluator and the resolved
`config.yaml` into `--out` (default: `<adapter folder>_eval_<split>`, or `<train.output_dir>/eval_<split>`),
and with `--mlflow` logs them as an MLflow run (tracking.* settings). Exit status 2 for a user error (bad
config, adapter that does not fit, split without ground truth), with the reason on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from unitrans_ds.cli import ArgumentParser  # noqa: E402
from unitrans_ds.config import ConfigError, load_config  # noqa: E402
from unitrans_ds.config.help import config_help  # noqa: E402

log = logging.getLogger("unitrans_ds.eval")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(  # also accepts the hyphenated spellings, e.g. --ds-config (unitrans_ds.cli)
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        prog="launchers/eval.py",
        epilog=config_help(),
    )
    p.add_argument("--config", default=None, help="experiment YAML (configs/*.yaml, or a run's config.yaml)")
    p.add_argument("--adapter", default=None, help="adapter folder (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("--split", default="test", choices=("test", "val"), help="which data.<split>_shards to evaluate")
    p.add_argument("--out", default=None, help="output folder for metrics.json and per-sample outputs")
    p.add_argument("--mlflow", action="store_true", help="log params, metrics and outputs to MLflow (rank 0)")
    p.add_argument(
        "--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)), help="set by the deepspeed launcher"
    )
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. eval.k_test=128 eval.batch_size=64")
    return p.parse_args(argv)


def default_out(cfg, adapter: str | None, split: str) -> Path:
    if adapter:
        a = Path(adapter).resolve()
        return a.parent / f"{a.name}_eval_{split}"
    return Path(cfg.train.output_dir) / f"eval_{split}"


def warn_adapter_differences(adapter: str, saved: dict, cfg, base_hash: str, method) -> None:
    """Same shapes but not the same base or settings: the adapter loads, and the log says what differs."""
    if int(os.environ.get("RANK", 0)) != 0:
        return
    if saved.get("base_config_hash") and saved["base_config_hash"] != base_hash:
        log.warning(
            "adapter %s was trained on a base with config hash %s, this base (model.init_from=%s) has %s: shapes "
            "fit but settings differ, so results may not match training; evaluate on the base it was trained on",
            adapter, saved["base_config_hash"], cfg.model.init_from, base_hash,
        )  # fmt: skip
    if method.rank != cfg.method.rank or method.name != cfg.method.name:
        log.warning(
            "adapter %s is %s with rank %d, the config says %s with rank %d: evaluating the adapter as saved",
            adapter, method.name, method.rank, cfg.method.name, cfg.method.rank,
        )  # fmt: skip


def build_model(cfg, adapter: str | None, local_rank: int):
    """Backbone + adapter (or the config's method at init) on this rank's device. Returns (model, tokenizer, cfg)."""
    import dataclasses

    import torch

    from unitrans_ds.adapters import load_adapter, prepare_model, read_adapter_config
    from unitrans_ds.engine.ds_config import bf16_supported, resolve_precision
    from unitrans_ds.models.build import load_backbone

    backbone = load_backbone(cfg.model, cfg.task, seed=cfg.train.seed)
    model = backbone.model
    if adapter:
        saved = read_adapter_config(adapter)
        method = load_adapter(model, adapter)
        warn_adapter_differences(adapter, saved, cfg, backbone.config_hash, method)
        cfg = dataclasses.replace(cfg, method=method)
        if saved.get("video") is not None and bool(saved["video"]) != cfg.video:
            log.warning(
                "adapter %s was trained with video=%s, evaluating with video=%s", adapter, saved["video"], cfg.video
            )
    else:
        prepare_model(model, cfg.method)
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    precision = resolve_precision(cfg.train.precision, bf16_supported()) if device.type == "cuda" else "fp32"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    model.to(device=device, dtype=dtype).eval()
    return model, backbone.tokenizer, cfg


def start_mlflow_run(cfg, args, rank: int, world: int, out: Path):
    """Open the evaluation's MLflow run before it evaluates (so its duration is the evaluation's), linked to the
    training run whose run folder holds `--adapter` (tag `unitrans_ds.train_run_id`, and as MLflow parent)."""
    import dataclasses

    from unitrans_ds.tracking import build_tracker
    from unitrans_ds.tracking.journal import recorded_run_id
    from unitrans_ds.tracking.run_info import run_params, standard_tags

    tracker = build_tracker(dataclasses.replace(cfg.tracking, enabled=True), rank, out)
    name = cfg.tracking.run_name or f"eval-{cfg.task}{'-video' if cfg.video else ''}-{cfg.method.name}-{args.split}"
    tags = {
        "kind": "eval",
        "task": cfg.task + ("-video" if cfg.video else ""),
        "method": cfg.method.name,
        "dataset": cfg.data.dataset,
        "split": args.split,
        "adapter": str(Path(args.adapter).resolve()) if args.adapter else "none (zero-shot)",
        **standard_tags("launchers/eval.py"),
    }
    train_run = recorded_run_id(Path(args.adapter).resolve().parent) if args.adapter else None
    if train_run:
        tags.update({"unitrans_ds.train_run_id": train_run, "mlflow.parentRunId": train_run})
    params = {**run_params(cfg, {}, {}, world), "eval.split": args.split, "eval.adapter": tags["adapter"]}
    tracker.start(name, tags, params)
    return tracker


def run(args: argparse.Namespace) -> dict[str, float]:
    from unitrans_ds.adapters import read_adapter_config
    from unitrans_ds.config import save_config
    from unitrans_ds.data.manifest import read_split
    from unitrans_ds.engine.distributed import init_distributed, pin_cpu_threads
    from unitrans_ds.evaluation import evaluate
    from unitrans_ds.tasks import build_task
    from unitrans_ds.tracking import NullTracker
    from unitrans_ds.tracking.run_info import split_metrics
    from unitrans_ds.tracking.summary import summary_table

    cfg = load_config(args.config, args.overrides)
    split_dir = getattr(cfg.data, f"{args.split}_shards")
    if not split_dir:
        raise ConfigError(f"data.{args.split}_shards is null: give the folder of the {args.split} shards")
    manifest = read_split(f"data.{args.split}_shards", split_dir)  # read once, handed to the evaluation
    rank, world, local_rank = init_distributed()  # the trainer's: a one-process group without a launcher
    # as the trainer does: the same numbers as its evaluations, and no OpenMP threads spinning against each other
    pin_cpu_threads(cfg.train.cpu_threads)
    model, tokenizer, cfg = build_model(cfg, args.adapter, local_rank)
    task = build_task(cfg, model, tokenizer, rank, world).to(next(model.parameters()).device)
    out = Path(args.out) if args.out else default_out(cfg, args.adapter, args.split)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        what = f"adapter {args.adapter}" if args.adapter else f"{cfg.method.name} at init (zero-shot)"
        print(f"[unitrans_ds] evaluating {cfg.task} on {split_dir} with {what}, {world} rank(s)", flush=True)
    tracker = start_mlflow_run(cfg, args, rank, world, out) if args.mlflow else NullTracker()
    try:
        metrics = evaluate(task, cfg, manifest, rank=rank, world_size=world, out_dir=out)
    except BaseException:
        tracker.finish("FAILED")
        raise
    logged = split_metrics(args.split, metrics)  # the names training logs: `test/r_mean`, `test_info/n_images`
    step = int(read_adapter_config(args.adapter).get("step", 0)) if args.adapter else 0
    tracker.log_metrics(logged, step)
    tracker.log_artifact(out, artifact_path=f"eval_{args.split}")
    tracker.finish("FINISHED")
    if rank == 0:
        print(summary_table(logged, out, tracker.run_id), flush=True)
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if int(os.environ.get("RANK", 0)) == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from unitrans_ds.adapters import AdapterMismatchError
    from unitrans_ds.evaluation import NoGroundTruthError, RemoteError

    try:
        run(args)
    except (ConfigError, AdapterMismatchError, NoGroundTruthError, RemoteError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        from unitrans_ds.engine.distributed import shutdown_distributed

        shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
