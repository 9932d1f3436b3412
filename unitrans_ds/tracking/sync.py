"""Complete a run's MLflow copy from its run folder, e.g. after an outage longer than training waited.

    python -m unitrans_ds.tracking.sync RUN_DIR [--tracking_uri URI]

Sends what MLflow lacks of `RUN_DIR/mlflow_journal.jsonl` and `RUN_DIR/metrics.jsonl` (params, tags, datasets,
artifacts, every metric point) to the run the folder names in `mlflow_sync.json`, creating the run when the
server was never reached. Safe to run any number of times: points already in MLflow are skipped, so nothing is
logged twice. The run ends with the status its trainer recorded; a run whose process is gone without one
(killed) ends KILLED, never RUNNING. Exit status 0 when the run is complete in MLflow, 1 when MLflow failed,
2 for a folder that holds no journal.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

from ..cli import ArgumentParser
from .journal import JOURNAL_FILE, Journal, read_cursor


def _process_alive(start: dict) -> bool:
    """Whether the process that wrote the run's last `start` may still run (unknown host: assume it does)."""
    if start.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(start["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


def sync(run_dir: str | Path, tracking_uri: str | None = None) -> tuple[str | None, str]:
    """Bring MLflow up to date with `run_dir`. Returns (run id, final status or RUNNING). Raises MLflow's errors."""
    from .mlflow_tracker import resolve_tracking_uri
    from .ship import Shipper

    run_dir = Path(run_dir)
    journal = Journal(run_dir)
    _, ops = journal.segment()
    if not ops:
        raise FileNotFoundError(f"{run_dir / JOURNAL_FILE} is missing or empty: {run_dir} is not a run folder")
    uri = resolve_tracking_uri(tracking_uri or read_cursor(run_dir).get("uri"))
    shipper = Shipper(run_dir, uri, dedup=True)
    done = shipper.ship()
    status = ops[-1]["status"] if done else "RUNNING"
    if not done:
        starts = [op for op in ops if op["op"] == "start"]
        if not _process_alive(starts[-1]):
            journal.append("finish", status="KILLED", note="closed by tracking.sync: the training process is gone")
            done = Shipper(run_dir, uri).ship()
            status = "KILLED"
    return shipper.run_id, status


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(  # also accepts --tracking-uri (unitrans_ds.cli)
        prog="python -m unitrans_ds.tracking.sync",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", help="a run folder (train.output_dir) holding mlflow_journal.jsonl and metrics.jsonl")
    p.add_argument(
        "--tracking_uri", default=None, help="MLflow to send to (default: the one the run used, from mlflow_sync.json)"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        run_id, status = sync(args.run_dir, args.tracking_uri)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # MLflow unreachable or refusing: one line, the folder is untouched
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"error: MLflow refused or unreachable ({type(e).__name__}: {first}); run again later", file=sys.stderr)
        return 1
    print(f"MLflow run {run_id}: up to date with {args.run_dir}, status {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
