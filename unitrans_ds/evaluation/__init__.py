"""Distributed evaluators (retrieval with ITM re-ranking, captioning, VQA; image and video) and their runner.

`evaluate(task, cfg, split_dir, rank, world_size, out_dir, merge)` is the entry point for the trainer and
`launchers/eval.py`; the per-task evaluators can be called directly with an `EvalLoader`.
"""

from .captioning import NoGroundTruthError, evaluate_captioning
from .distributed import RemoteError, all_gather_objects, all_gather_rows, broadcast_from_rank0, on_rank0
from .inference import inference_mode, mergeable_layers
from .retrieval import TokenStore, evaluate_retrieval
from .runner import EVALUATORS, eval_loader, evaluate
from .vqa import answer_list_from_split, evaluate_vqa

__all__ = [
    "EVALUATORS",
    "NoGroundTruthError",
    "RemoteError",
    "TokenStore",
    "all_gather_objects",
    "all_gather_rows",
    "answer_list_from_split",
    "broadcast_from_rank0",
    "eval_loader",
    "evaluate",
    "evaluate_captioning",
    "evaluate_retrieval",
    "evaluate_vqa",
    "inference_mode",
    "mergeable_layers",
    "on_rank0",
]
