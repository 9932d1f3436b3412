"""Experiment tracking: the run folder first (`metrics.jsonl`, `mlflow_journal.jsonl`), MLflow as its copy, on
rank 0 only; nothing on other ranks.

`MlflowTracker` is imported lazily (MLflow takes seconds to import), so ranks other than 0 never load it.
`python -m unitrans_ds.tracking.sync RUN_DIR` completes an MLflow run from its folder after an outage.
"""

from .base import RUN_STATUSES, JsonlTracker, NullTracker, RunStatus, Tracker, build_tracker, metrics_as_floats
from .journal import JOURNAL_FILE, METRICS_FILE, MetricsFile

__all__ = [
    "JOURNAL_FILE",
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
