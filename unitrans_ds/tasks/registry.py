"""The task registry: the one list of tasks, by the name configs use (`task:`).

Every module that needs a fact about a task (its HF class, where QASN goes, what a training item is, its
metrics) asks here for the task class and reads the fact off it. Adding a task: one task file (a `Task` subclass
with its facts, settings, training step and `evaluate`), one line below, and its configs (docs/architecture.md).

The modules below the tasks (config, models, adapters, data) import this at call time, not at import time:
the task classes are built on them.
"""

from __future__ import annotations

from torch import nn

from .base import Task
from .captioning import CaptioningTask
from .retrieval import RetrievalTask
from .vqa import VQATask

TASKS: dict[str, type[Task]] = {
    RetrievalTask.name: RetrievalTask,
    CaptioningTask.name: CaptioningTask,
    VQATask.name: VQATask,
}


def task_class(name: str) -> type[Task]:
    """The task class registered under `name`; an unknown name is a one-line error listing the known ones."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {name!r}")
    return TASKS[name]


def task_of_model(model: nn.Module) -> type[Task]:
    """The task class whose HF BLIP class `model` is."""
    for cls in TASKS.values():
        if isinstance(model, cls.hf_model):
            return cls
    names = ", ".join(cls.hf_model.__name__ for cls in TASKS.values())
    raise TypeError(f"expected one of {names}, got {type(model).__name__}")
