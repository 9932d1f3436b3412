"""Experiment tracking: MLflow on rank 0, a local `metrics.jsonl` always, nothing on other ranks.

`MlflowTracker` is imported lazily (MLflow takes seconds to import), so ranks other than 0 never load it.
"""

from .base import (
    METRICS_FILE,
    RUN_STATUSES,
    JsonlTracker,
    MetricsFile,
    NullTracker,
    RunStatus,
    Tracker,
    build_tracker,
    metrics_as_floats,
)

__all__ = [
    "METRICS_FILE",
    "RUN_STATUSES",
    "JsonlTracker",
    "MetricsFile",
    "MlflowTracker",
    "NullTracker",
    "RunStatus",
    "Tracker",
    "build_tracker",
    "metrics_as_floats",
]


def __getattr__(name: str):
    if name == "MlflowTracker":
        from .mlflow_tracker import MlflowTracker

        return MlflowTracker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
