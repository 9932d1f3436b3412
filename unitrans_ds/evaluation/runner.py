"""`evaluate`: one entry point for every task's evaluation, used by the trainer and by `launchers/eval.py`.

It builds this rank's eval loader for a shards folder from the run config, runs the task's own `evaluate`
(retrieval, captioning, VQA; video is a mode of retrieval and VQA), and writes `metrics.json` on rank 0. It is a
collective: every rank calls it, with the same config and folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..config.schema import Config
from ..data.loaders import eval_loader_from_config
from ..data.manifest import Manifest
from ..tracking.progress import labelled, split_name

if TYPE_CHECKING:
    from ..tasks import Task

METRICS_FILE = "metrics.json"


def evaluate(
    task: Task,
    cfg: Config,
    split_dir: str | Path | Manifest,
    rank: int = 0,
    world_size: int = 1,
    out_dir: str | Path = "eval",
    merge: bool = True,
) -> dict[str, float]:
    """Metrics of `task` on the shards folder `split_dir` (or its manifest, read already; a collective), equal on
    every rank.

    `task` is the built Task (its model may sit inside a DeepSpeed engine); `merge=False` keeps the adapters
    unmerged (ZeRO-3, where parameters are partitioned). Per-sample outputs and `metrics.json` go to `out_dir`
    (rank 0 only). The metric names depend on the task only, never on the method, and `eval_seconds` is added.
    """
    from ..tasks.base import Dist  # the tasks import this package's steps; the runner sits above them

    start = time.perf_counter()
    loader = eval_loader_from_config(cfg, split_dir, rank=rank, world_size=world_size)
    with labelled(split_name(loader)):  # the bars say which split they evaluate
        metrics = task.evaluate(loader, Dist(rank, world_size), out_dir, merge=merge)
    metrics["eval_seconds"] = time.perf_counter() - start
    if rank == 0:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return metrics
