"""One task class per task, with the same small interface (see `base.Task`)."""

from __future__ import annotations

from ..config.schema import Config
from .base import Task
from .captioning import CaptioningTask
from .retrieval import RetrievalTask
from .vqa import VQATask, answer_weights

TASKS: dict[str, type[Task]] = {"retrieval": RetrievalTask, "captioning": CaptioningTask, "vqa": VQATask}


def build_task(cfg: Config, model, tokenizer, rank: int = 0, world_size: int = 1) -> Task:
    """The task object for `cfg.task` around a prepared BLIP model (video is a mode of retrieval and VQA)."""
    return TASKS[cfg.task](model, tokenizer, cfg, rank, world_size)


__all__ = ["TASKS", "CaptioningTask", "RetrievalTask", "Task", "VQATask", "answer_weights", "build_task"]
