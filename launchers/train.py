"""Train a UniTrans (or baseline) adapter on BLIP with DeepSpeed.

    deepspeed launchers/train.py --ds_config ds_configs/zero2.json [--config configs/NAME.yaml] [key=value ...]

With no --config the embedded default runs: UniTrans retrieval on shards/demo with a tiny BLIP, offline.
Settings layer as defaults <- YAML <- dotted overrides (e.g. `optim.lr=1e-4 train.max_steps=50`).
Also runs as a plain `python launchers/train.py ...` (one rank). When DeepSpeed's port 29500 is taken (EADDRINUSE):
`deepspeed --master_port 29501 launchers/train.py ...`. Hyphenated flags (`--ds-config`) are accepted too.

Exit status: 0 done; 2 bad input (one line on stderr, from rank 0); 143 stopped by SIGTERM (to a rank, to all ranks,
or to the `deepspeed` runner) after every rank saved a checkpoint at the same step: rerun with --resume. A SIGTERM
to the `deepspeed.launcher.launch` process itself stops the ranks the same way, but that launcher then exits 1.
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
from unitrans_ds.data.manifest import read_splits  # noqa: E402
from unitrans_ds.data.skips import DataLossError  # noqa: E402
from unitrans_ds.engine.checkpoint import CheckpointError, UnsafeCheckpointError  # noqa: E402
from unitrans_ds.engine.distributed import shutdown_distributed  # noqa: E402
from unitrans_ds.engine.ds_config import DeepSpeedConfigError  # noqa: E402
from unitrans_ds.engine.stop import EXIT_STOPPED  # noqa: E402
from unitrans_ds.models.convert_blip import ModelLoadError  # noqa: E402

#: problems with what the user gave (config, files, checkpoints): one line on rank 0, exit status 2
USER_ERRORS = (ConfigError, DeepSpeedConfigError, ModelLoadError, CheckpointError, UnsafeCheckpointError, DataLossError)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(  # also accepts the hyphenated spellings, e.g. --ds-config (unitrans_ds.cli)
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        prog="launchers/train.py",
        epilog=config_help(),
    )
    p.add_argument(
        "--ds_config",
        default="ds_configs/zero2.json",
        help="DeepSpeed JSON (ds_configs/zero{0,1,2,3}.json, zero2_offload.json)",
    )
    p.add_argument("--config", default=None, help="experiment YAML (configs/*.yaml); default: the embedded demo run")
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        help="resume from the latest checkpoint of the run folder (or of a given run folder: --resume DIR)",
    )
    p.add_argument(
        "--dry_run",
        nargs="?",
        const="2",
        default=None,
        metavar="MICRO_BATCH",
        help="no data or weights needed: write a few native samples, shard them, build the config's architecture "
        "with random weights, train 2 steps of MICRO_BATCH (default 2) and evaluate once; prints times, peak "
        "memory and the activation estimate for the config's batch (docs/reproducing.md)",
    )
    p.add_argument(
        "--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)), help="set by the deepspeed launcher"
    )
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=1e-4 train.max_steps=20")
    args = p.parse_intermixed_args(argv)  # overrides may come before, between and after the options
    # `--resume key=value`: argparse hands the override to --resume; a key=value that is no folder is an override.
    if args.resume not in (None, "auto") and "=" in args.resume and not Path(args.resume).is_dir():
        args.overrides.insert(0, args.resume)
        args.resume = "auto"
    if args.dry_run is not None and not args.dry_run.isdigit():  # `--dry_run key=value`: the same for --dry_run
        if "=" not in args.dry_run:
            p.error(f"--dry_run takes a micro batch (a whole number), got {args.dry_run!r}")
        args.overrides.insert(0, args.dry_run)
        args.dry_run = "2"
    return args


def one_line(message: str) -> str:
    """A multi-line error (e.g. a list of config problems) as one line for the log."""
    parts = [line.strip().removeprefix("- ") for line in str(message).splitlines() if line.strip()]
    return parts[0] + (" " + "; ".join(parts[1:]) if len(parts) > 1 else "") if parts else repr(message)


def check_inputs(cfg) -> dict:
    """Problems with the files a config names, found before any model is built (ConfigError, one line each).
    Returns the splits' manifests, read once for the run (the trainer takes them)."""
    manifests = read_splits(cfg.data)
    out = Path(cfg.train.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"train.output_dir: {out} is a file, not a folder; set train.output_dir to a folder path")
    return manifests


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if int(os.environ.get("RANK", 0)) == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.dry_run is not None:
            from unitrans_ds.dryrun import dry_run

            dry_run(args.config, args.overrides, args.ds_config, micro_batch=int(args.dry_run))
            return 0
        cfg = load_config(args.config, args.overrides)
        manifests = check_inputs(cfg)
        from unitrans_ds.engine.trainer import train

        result = train(cfg, args.ds_config, resume=args.resume, manifests=manifests)
    except USER_ERRORS as e:
        if int(os.environ.get("RANK", 0)) == 0:  # every rank finds the same problem; one says it
            print(f"error: {one_line(str(e))}", file=sys.stderr, flush=True)
        return 2
    finally:
        shutdown_distributed()
    return EXIT_STOPPED if result.status == "KILLED" else 0


if __name__ == "__main__":
    sys.exit(main())
