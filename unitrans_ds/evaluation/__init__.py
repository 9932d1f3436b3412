"""Distributed evaluators (retrieval with ITM re-ranking, captioning, VQA; image and video) and their runner.

`evaluate(task, cfg, split_dir, rank, world_size, out_dir, merge)` is the entry point for the trainer and
`launchers/eval.py`; the per-task evaluators can be called directly with an `EvalLoader`.
"""

from ..collectives import RemoteError
from .captioning import NoGroundTruthError, evaluate_captioning
from .inference import inference_mode, mergeable_layers
from .retrieval import TokenStore, evaluate_retrieval
from .runner import EVALUATORS, eval_loader, evaluate
from .vqa import answer_list_from_split, evaluate_vqa

__all__ = [
    "EVALUATORS",
    "NoGroundTruthError",
    "RemoteError",
    "TokenStore",
    "answer_list_from_split",
    "eval_loader",
    "evaluate",
    "evaluate_captioning",
    "evaluate_retrieval",
    "evaluate_vqa",
    "inference_mode",
    "mergeable_layers",
]
