"""The experiment-tracker interface, its do-nothing and local-file forms, and the factory that picks one per rank.

Call sites never test the rank: every rank gets a `Tracker`, and only rank 0's one writes anything. Rank 0 gets
`MlflowTracker` (MLflow plus the local `metrics.jsonl`), or `JsonlTracker` (the local file only) when
`tracking.enabled` is false; every other rank gets `NullTracker`, which touches neither files nor MLflow.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Literal

from ..config.schema import TrackingConfig
from .journal import MetricsFile

RunStatus = Literal["FINISHED", "FAILED", "KILLED"]
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")


class Tracker(ABC):
    """What the trainer logs through. All methods are safe to call on every rank and never raise for I/O trouble."""

    @abstractmethod
    def start(
        self, run_name: str, tags: dict[str, str], params: dict[str, Any], resume_run_id: str | None = None
    ) -> str | None:
        """Open a run (or continue `resume_run_id`), set `tags`, log flattened `params`. Returns the run id."""

    @abstractmethod
    def log_params(self, params: dict[str, Any]) -> None:
        """Log a flat `{"a.b": value}` dict as run parameters."""

    @abstractmethod
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log scalar metrics at optimizer step `step`."""

    @abstractmethod
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file or a whole folder (e.g. an adapter export) under `artifact_path` in the run."""

    @abstractmethod
    def log_dict(self, data: dict, name: str) -> None:
        """Store `data` as the JSON/YAML artifact `name` (the suffix picks the format)."""

    @abstractmethod
    def set_tags(self, tags: dict[str, str]) -> None:
        """Set run tags."""

    def log_inputs(self, datasets: list[dict]) -> None:  # noqa: B027 (optional: only MLflow has datasets)
        """Record the datasets the run reads (see `tracking.datasets.shard_datasets`)."""

    @abstractmethod
    def finish(self, status: RunStatus = "FINISHED") -> None:
        """Close the run with `status`: FINISHED, FAILED or KILLED."""

    @property
    @abstractmethod
    def run_id(self) -> str | None:
        """The MLflow run id, or None when there is no MLflow run."""


class NullTracker(Tracker):
    """For ranks other than 0: accepts every call and does nothing, so call sites need no rank checks."""

    def start(self, run_name, tags, params, resume_run_id=None):  # noqa: ARG002 (takes the interface's, ignores them)
        return None

    def log_params(self, params):
        pass

    def log_metrics(self, metrics, step):
        pass

    def log_artifact(self, path, artifact_path=None):
        pass

    def log_dict(self, data, name):
        pass

    def set_tags(self, tags):
        pass

    def finish(self, status="FINISHED"):
        pass

    @property
    def run_id(self):
        return None


def _scalar(key: str, value: Any) -> float:
    """Tensors, numpy scalars and numbers -> float; anything else is a programming error at the call site."""
    item = getattr(value, "item", None)
    if callable(item):
        value = item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def metrics_as_floats(metrics: dict[str, Any]) -> dict[str, float]:
    """Validate and convert a metrics dict (see `_scalar`)."""
    return {str(k): _scalar(str(k), v) for k, v in metrics.items()}


class JsonlTracker(NullTracker):
    """Rank 0 with MLflow disabled: metrics still go to `metrics.jsonl`; artifacts are already local files."""

    def __init__(self, run_dir: str | Path):
        self.metrics_file = MetricsFile(run_dir)

    def log_metrics(self, metrics, step):
        self.metrics_file.append(metrics_as_floats(metrics), step)


def build_tracker(cfg: TrackingConfig, rank: int, run_dir: str | Path) -> Tracker:
    """The tracker for this process. Only rank 0 writes; MLflow is imported only when it is used."""
    if rank != 0:
        return NullTracker()
    if not cfg.enabled:
        return JsonlTracker(run_dir)
    from .mlflow_tracker import MlflowTracker

    return MlflowTracker(
        experiment=cfg.experiment,
        tracking_uri=cfg.tracking_uri,
        run_dir=run_dir,
        finish_timeout_s=cfg.finish_timeout_s,
        system_metrics_interval_s=cfg.system_metrics_interval_s,
    )
