"""One task class per task, with the same small interface (see `base.Task`), and their registry."""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedTokenizerBase

from ..config.schema import Config
from .base import Dist, Task, TaskSettings
from .captioning import CaptioningTask
from .registry import TASKS, task_class, task_of_model
from .retrieval import RetrievalTask
from .vqa import VQATask, answer_weights


def build_task(
    cfg: Config, model: nn.Module, tokenizer: PreTrainedTokenizerBase, rank: int = 0, world_size: int = 1
) -> Task:
    """The task object for `cfg.task` around a prepared BLIP model (video is a mode of retrieval and VQA), told
    only its settings (`settings_from(cfg)`) and where this process sits among the ranks."""
    cls = task_class(cfg.task)
    return cls(model, tokenizer, cls.settings_from(cfg), Dist(rank, world_size))


__all__ = [
    "TASKS",
    "CaptioningTask",
    "Dist",
    "RetrievalTask",
    "Task",
    "TaskSettings",
    "VQATask",
    "answer_weights",
    "build_task",
    "task_class",
    "task_of_model",
]
