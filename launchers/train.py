"""Train a UniTrans (or baseline) adapter on BLIP with DeepSpeed.

    deepspeed launchers/train.py --ds_config ds_configs/zero2.json [--config configs/NAME.yaml] [key=value ...]

With no --config the embedded default runs: UniTrans retrieval on shards/demo with a tiny BLIP, offline.
Settings layer as defaults <- YAML <- dotted overrides (e.g. `optim.lr=1e-4 train.max_steps=50`).
Also runs as a plain `python launchers/train.py ...` (one rank). When DeepSpeed's port 29500 is taken (EADDRINUSE):
`deepspeed --master_port 29501 launchers/train.py ...`. Hyphenated flags (`--ds-config`) are accepted too.
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
from unitrans_ds.data.manifest import check_remote_split  # noqa: E402
from unitrans_ds.data.remote import is_remote  # noqa: E402
from unitrans_ds.engine.distributed import shutdown_distributed  # noqa: E402
from unitrans_ds.engine.ds_config import DeepSpeedConfigError  # noqa: E402


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
        help="resume from the latest checkpoint of the run folder (or of a given run folder)",
    )
    p.add_argument(
        "--dry_run",
        nargs="?",
        type=int,
        const=2,
        default=None,
        metavar="MICRO_BATCH",
        help="no data or weights needed: write a few native samples, shard them, build the config's architecture "
        "with random weights, train 2 steps of MICRO_BATCH (default 2) and evaluate once; prints times, peak "
        "memory and the activation estimate for the config's batch (docs/reproducing.md). Put key=value overrides "
        "before it",
    )
    p.add_argument(
        "--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)), help="set by the deepspeed launcher"
    )
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=1e-4 train.max_steps=20")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if int(os.environ.get("RANK", 0)) == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.dry_run is not None:
            from unitrans_ds.dryrun import dry_run

            dry_run(args.config, args.overrides, args.ds_config, micro_batch=args.dry_run)
            return 0
        cfg = load_config(args.config, args.overrides)
        for split in ("train", "val", "test"):
            folder = getattr(cfg.data, f"{split}_shards")
            if folder and is_remote(folder):
                check_remote_split(f"data.{split}_shards", folder)
            elif folder and not (Path(folder) / "manifest.json").is_file():
                raise ConfigError(
                    f"data.{split}_shards: {folder} holds no manifest.json; build the shards with "
                    "`python -m unitrans_ds.make_shards ...` (see shards/README.md) or fix the path"
                )
        from unitrans_ds.engine.trainer import train

        train(cfg, args.ds_config, resume=args.resume)
    except (ConfigError, DeepSpeedConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
