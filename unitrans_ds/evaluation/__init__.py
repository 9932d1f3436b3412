"""The steps of every task's evaluation (retrieval with ITM re-ranking, captioning, VQA; image and video), the
collectives and inference context they run in, and the runner.

Each task class drives its own steps (`Task.evaluate`); `evaluate(task, cfg, split_dir, rank, world_size,
out_dir, merge)` is the entry point for the trainer and `launchers/eval.py`.
"""

from ..collectives import RemoteError
from .captioning import NoGroundTruthError
from .inference import inference_mode
from .retrieval import TokenStore
from .runner import evaluate
from .vqa import answer_list_from_split

__all__ = [
    "NoGroundTruthError",
    "RemoteError",
    "TokenStore",
    "answer_list_from_split",
    "evaluate",
    "inference_mode",
]
