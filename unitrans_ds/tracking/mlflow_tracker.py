"""MLflow tracking for rank 0, which keeps training going (and every metric) when the server goes away.

Where runs go: `tracking.tracking_uri` when set, else the `MLFLOW_TRACKING_URI` environment variable, else a local
store `sqlite:///<cwd>/mlruns/mlflow.db` with artifacts in `./mlruns` (browse it with
`mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db`). SQLite is MLflow 3's own default backend; keeping
it inside `./mlruns` keeps everything a run writes in one folder.

Every metric is appended to `<run_dir>/metrics.jsonl` before MLflow sees it. The first MLflow call that fails
(server down, network gone, disk full) switches the tracker to offline: one warning names the URI and the local
file, later MLflow calls are skipped, and training never sees an exception. Metrics logged while offline are not
replayed to MLflow later; `metrics.jsonl` is their record.

Only the client API (`MlflowClient`) is used, never the fluent `mlflow.start_run`, so no global "active run" is
left behind for other code to trip over.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from .base import RUN_STATUSES, MetricsFile, RunStatus, Tracker, metrics_as_floats

logger = logging.getLogger(__name__)

# MLflow's HTTP client retries 7 times with exponential backoff and waits 120 s per request by default, which
# would stall a training step for minutes when the server is gone. Users can still override both.
FAST_FAIL_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
PROBE_TIMEOUT_S = 3.0
OFFLINE_DIR = "mlflow_offline"
TRUNCATION_NOTE = "...[truncated from {n} chars]"


def resolve_tracking_uri(configured: str | None) -> str:
    """`tracking.tracking_uri`, else `MLFLOW_TRACKING_URI`, else the local SQLite store under `./mlruns`."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    folder = Path("mlruns").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def server_reachable(uri: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when `uri` is not HTTP or its host accepts a TCP connection; else why not (for the warning)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return None
    except OSError as e:
        return f"cannot connect to {parsed.hostname}:{port}: {e}"


def truncate_param(value: Any, limit: int) -> str:
    """MLflow rejects param values longer than `limit`; keep the head and say how long the original was."""
    text = str(value)
    if len(text) <= limit:
        return text
    note = TRUNCATION_NOTE.format(n=len(text))
    return text[: limit - len(note)] + note


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class MlflowTracker(Tracker):
    """Rank 0's tracker. See the module docstring for where runs go and what happens when MLflow fails."""

    def __init__(self, experiment: str, tracking_uri: str | None = None, run_dir: str | Path = "."):
        for key, value in FAST_FAIL_ENV.items():
            os.environ.setdefault(key, value)
        self.experiment = experiment
        self.uri = resolve_tracking_uri(tracking_uri)
        self.run_dir = Path(run_dir)
        self.metrics_file = MetricsFile(run_dir)
        self._client = None
        self._run_id: str | None = None
        self._params: dict[str, str] = {}
        self.offline_reason: str | None = None

    @property
    def run_id(self) -> str | None:
        return self._run_id

    @property
    def online(self) -> bool:
        return self._run_id is not None and self.offline_reason is None

    def _go_offline(self, reason: str) -> None:
        if self.offline_reason is None:
            self.offline_reason = reason
            logger.warning(
                "MLflow at %s unreachable: metrics are kept in %s (%s). Training goes on; MLflow logging is off "
                "for the rest of this run.",
                self.uri,
                self.metrics_file.path,
                reason,
            )

    def _call(self, what: str, fn, *args, **kwargs) -> Any:
        """Run one MLflow call; the first failure switches to offline instead of raising."""
        if self.offline_reason is not None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # any client, network or store error: training must go on
            self._go_offline(f"{what} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            return None

    def start(self, run_name, tags, params, resume_run_id=None):
        problem = server_reachable(self.uri)
        if problem:
            self._go_offline(problem)
            return None
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=self.uri)
        experiment_id = self._call("opening the experiment", self._experiment_id)
        if experiment_id is None:
            return None
        if resume_run_id:
            self._run_id = self._call("resuming the run", self._resume, resume_run_id)
        if self._run_id is None and self.offline_reason is None:
            run = self._call("creating the run", self._client.create_run, experiment_id, run_name=run_name)
            self._run_id = run.info.run_id if run else None
            if resume_run_id and self._run_id:
                tags = {**tags, "resumed_from_missing_run": resume_run_id}
        if self._run_id is None:
            return None
        self.set_tags(tags)
        self.log_params(params)
        return self._run_id if self.offline_reason is None else None

    def _experiment_id(self) -> str:
        exp = self._client.get_experiment_by_name(self.experiment)
        if exp is None:
            return self._client.create_experiment(self.experiment)
        if exp.lifecycle_stage == "deleted":
            # a deleted experiment still owns its name; bring it back rather than fail
            self._client.restore_experiment(exp.experiment_id)
        return exp.experiment_id

    def _resume(self, run_id: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            run = self._client.get_run(run_id)
        except MlflowException:
            logger.warning("MLflow run %s not found at %s: starting a new run", run_id, self.uri)
            return None
        self._params = dict(run.data.params)
        self._client.update_run(run_id, status="RUNNING")
        return run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        if not self.online:
            return
        new, changed = {}, {}
        for key, value in params.items():
            text = truncate_param(value, MAX_PARAM_VAL_LENGTH)
            if key not in self._params:
                new[key] = text
            elif self._params[key] != text:
                changed[key] = text
        for batch in _chunks([Param(k, v) for k, v in new.items()], MAX_PARAMS_TAGS_PER_BATCH):
            self._call("logging params", self._client.log_batch, self._run_id, params=batch)
        self._params.update(new)
        if changed:
            # MLflow params are write-once; a resumed run with new values keeps them as tags instead
            logger.warning("params changed since this MLflow run began, logged as `param_update.*` tags: %s", changed)
            self.set_tags({f"param_update.{k}": v for k, v in changed.items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        values = metrics_as_floats(metrics)
        self.metrics_file.append(values, step)
        if not self.online:
            return
        now = int(time.time() * 1000)
        entries = [Metric(k, v, now, int(step)) for k, v in values.items()]
        for batch in _chunks(entries, MAX_METRICS_PER_BATCH):
            self._call("logging metrics", self._client.log_batch, self._run_id, metrics=batch)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file goes under `artifact_path`; a folder goes under `artifact_path` or, by default, its own name."""
        path = Path(path)
        if not path.exists():
            logger.warning("artifact %s does not exist; not logged to MLflow", path)
            return
        if not self.online:
            return
        if path.is_dir():
            self._call(
                "logging artifacts", self._client.log_artifacts, self._run_id, str(path), artifact_path or path.name
            )
        else:
            self._call("logging an artifact", self._client.log_artifact, self._run_id, str(path), artifact_path)

    def log_dict(self, data: dict, name: str) -> None:
        """Without a working MLflow run, `data` is written to `<run_dir>/mlflow_offline/<name>` instead."""
        if self.online:
            self._call("logging a dict", self._client.log_dict, self._run_id, data, name)
        if not self.online:
            path = self.run_dir / OFFLINE_DIR / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix in (".yaml", ".yml"):
                path.write_text(yaml.safe_dump(data, sort_keys=False))
            else:
                path.write_text(json.dumps(data, indent=2, default=str))

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH

        if not self.online:
            return
        entries = [RunTag(k, truncate_param(v, MAX_TAG_VAL_LENGTH)) for k, v in tags.items()]
        for batch in _chunks(entries, MAX_PARAMS_TAGS_PER_BATCH):
            self._call("setting tags", self._client.log_batch, self._run_id, tags=batch)

    def finish(self, status: RunStatus = "FINISHED") -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
        if self.online:
            self._call("closing the run", self._client.set_terminated, self._run_id, status)
