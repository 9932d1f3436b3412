"""`evaluate`: one entry point for every task's evaluation, used by the trainer and by `launchers/eval.py`.

It builds this rank's eval loader for a shards folder from the run config, dispatches to the task's evaluator
(retrieval, captioning, VQA; video is a mode of retrieval and VQA), and writes `metrics.json` on rank 0. It is a
collective: every rank calls it, with the same config and folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from ..config.schema import Config
from ..data.loaders import EvalLoader, eval_loader_from_config
from ..tasks import Task
from ..tracking.progress import labelled, split_name
from .captioning import evaluate_captioning
from .retrieval import evaluate_retrieval
from .vqa import evaluate_vqa

EVALUATORS: dict[str, Callable[..., dict[str, float]]] = {
    "retrieval": evaluate_retrieval,
    "captioning": evaluate_captioning,
    "vqa": evaluate_vqa,
}
METRICS_FILE = "metrics.json"
# Captioning references are scored whole: the loader's 30-word cut is for texts fed to the model.
_UNCUT = 10_000


def eval_loader(cfg: Config, split_dir: str | Path, rank: int, world_size: int) -> EvalLoader:
    """This rank's eval loader over `split_dir` with the run config's sizes, batch and workers."""
    return eval_loader_from_config(
        cfg, split_dir, rank=rank, world_size=world_size, max_words=_UNCUT if cfg.task == "captioning" else None
    )


def evaluate(
    task: Task,
    cfg: Config,
    split_dir: str | Path,
    rank: int = 0,
    world_size: int = 1,
    out_dir: str | Path = "eval",
    merge: bool = True,
) -> dict[str, float]:
    """Metrics of `task` on the shards folder `split_dir` (a collective), equal on every rank.

    `task` is the built Task (its model may sit inside a DeepSpeed engine); `merge=False` keeps the adapters
    unmerged (ZeRO-3, where parameters are partitioned). Per-sample outputs and `metrics.json` go to `out_dir`
    (rank 0 only). The metric names depend on the task only, never on the method, and `eval_seconds` is added.
    """
    if cfg.task not in EVALUATORS:
        raise ValueError(f"no evaluator for task {cfg.task!r}; use one of {sorted(EVALUATORS)}")
    start = time.perf_counter()
    loader = eval_loader(cfg, split_dir, rank, world_size)
    with labelled(split_name(loader)):  # the bars say which split they evaluate
        metrics = EVALUATORS[cfg.task](task, loader, rank, world_size, out_dir, merge=merge)
    metrics["eval_seconds"] = time.perf_counter() - start
    if rank == 0:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return metrics
