"""MLflow tracking for rank 0 that survives MLflow going away: the run folder first, MLflow as a copy.

Where runs go: `tracking.tracking_uri` when set, else `MLFLOW_TRACKING_URI`, else MLflow's own default store
(in MLflow 3: `sqlite:///mlflow.db` in the working directory, or `./mlruns` where an old file store already
is), which is where a plain `mlflow ui` started from the same directory looks.

Every call is written to the run folder (`metrics.jsonl`, `mlflow_journal.jsonl`; see `journal.py`) and
returns at once; a background thread ships it to MLflow (`ship.py`). When MLflow fails (server down,
network gone) the thread warns once, retries with exponential backoff (1 s doubling to 30 s) and, when the
server answers again, replays everything since the last point MLflow confirmed. Training never waits on
MLflow and never sees its exceptions. `finish()` keeps retrying for `tracking.finish_timeout_s`, then names
the command that completes the run later: `python -m unitrans_ds.tracking.sync RUN_DIR`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .base import RUN_STATUSES, RunStatus, Tracker, metrics_as_floats
from .journal import Journal, MetricsFile
from .params import params_as_text

logger = logging.getLogger(__name__)

# MLflow's HTTP client retries 7 times with exponential backoff and waits 120 s per request by default; our own
# thread retries (and replays) instead, so one attempt is enough. Users can still override both.
FAST_FAIL_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
FIRST_RETRY_S, MAX_RETRY_S = 1.0, 30.0


def resolve_tracking_uri(configured: str | None) -> str:
    """`tracking.tracking_uri`, else `MLFLOW_TRACKING_URI`, else MLflow's default; local paths made absolute."""
    import mlflow

    uri = configured or mlflow.get_tracking_uri()
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite" and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    if parsed.scheme in ("", "file") and "://" not in uri:
        return Path(uri).resolve().as_uri()
    return uri


def sync_command(run_dir: str | Path) -> str:
    return f"python -m unitrans_ds.tracking.sync {run_dir}"


class MlflowTracker(Tracker):
    """Rank 0's tracker. See the module docstring for where runs go and what happens when MLflow fails."""

    def __init__(
        self,
        experiment: str,
        tracking_uri: str | None = None,
        run_dir: str | Path = ".",
        finish_timeout_s: float = 120.0,
        system_metrics_interval_s: float | None = None,
    ):
        for key, value in FAST_FAIL_ENV.items():
            os.environ.setdefault(key, value)
        self.experiment = experiment
        self.uri = resolve_tracking_uri(tracking_uri)
        self.run_dir = Path(run_dir)
        self.metrics_file = MetricsFile(run_dir)
        self.journal = Journal(run_dir)
        self.finish_timeout_s = finish_timeout_s
        self.system_metrics_interval_s = system_metrics_interval_s
        self._lock = threading.Lock()  # the system-metrics thread logs too
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._shipper = None
        self._sampler = None
        self._complete = False
        self.failure: str | None = None  # the last MLflow error while it lasts
        self.last_step = 0

    @property
    def run_id(self) -> str | None:
        return self._shipper.run_id if self._shipper is not None else None

    @property
    def complete(self) -> bool:
        """True after `finish()` when everything, the final status included, reached MLflow."""
        return self._complete

    # ------------------------------------------------------------------ the shipping thread
    def _ship_once(self) -> bool:
        try:
            done = self._shipper.ship()
        except Exception as e:  # any client, network or store error: retried, training goes on
            first = self.failure is None
            self.failure = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            if first:
                logger.warning(
                    "MLflow at %s unreachable (%s). Training goes on; everything stays in %s (metrics.jsonl, "
                    "mlflow_journal.jsonl) and is replayed when the server is back (retrying with backoff).",
                    self.uri,
                    self.failure,
                    self.run_dir,
                )
            return False
        if self.failure is not None:
            self.failure = None
            logger.warning(
                "MLflow at %s reachable again: run %s caught up from %s", self.uri, self.run_id, self.run_dir
            )
        return done

    def _loop(self) -> None:
        delay, deadline = 0.0, None
        while True:
            done = self._ship_once()
            delay = 0.0 if self.failure is None else min(max(FIRST_RETRY_S, delay * 2), MAX_RETRY_S)
            if self._stop.is_set():
                deadline = deadline or time.monotonic() + self.finish_timeout_s
                if done or time.monotonic() >= deadline:
                    self._complete = done
                    return
                delay = min(delay, max(0.0, deadline - time.monotonic()))
            self._wake.wait(timeout=delay if self.failure is not None else None)
            self._wake.clear()

    # ------------------------------------------------------------------ the Tracker interface
    def start(self, run_name, tags, params, resume_run_id=None):
        from .ship import Shipper

        self.journal.append(
            "start",
            run_name=run_name,
            experiment=self.experiment,
            tags={k: str(v) for k, v in tags.items()},
            params=params_as_text(params),
            resume_run_id=resume_run_id,
            metrics_offset=self.metrics_file.size(),
            pid=os.getpid(),
            host=socket.gethostname(),
        )
        self._shipper = Shipper(self.run_dir, self.uri)
        self._ship_once()  # at once, so that the run id is known to the caller when MLflow is up
        self._thread = threading.Thread(target=self._loop, name="mlflow-shipper", daemon=True)
        self._thread.start()
        if self.system_metrics_interval_s:
            from .system_metrics import SystemMetricsSampler

            self._sampler = SystemMetricsSampler(self, self.system_metrics_interval_s)
        return self.run_id

    def _record(self, op: str, **fields: Any) -> None:
        if self._shipper is None:
            raise RuntimeError("MlflowTracker: call start() first")
        with self._lock:
            self.journal.append(op, **fields)
        self._wake.set()

    def log_params(self, params: dict[str, Any]) -> None:
        self._record("params", params=params_as_text(params))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._record("tags", tags={k: str(v) for k, v in tags.items()})

    def log_inputs(self, datasets: list[dict]) -> None:
        self._record("inputs", datasets=datasets)

    def log_dict(self, data: dict, name: str) -> None:
        self._record("dict", data=data, name=name)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file goes under `artifact_path`; a folder goes under `artifact_path` or, by default, its own name."""
        path = Path(path)
        if not path.exists():
            logger.warning("artifact %s does not exist; not logged to MLflow", path)
            return
        self._record("artifact", path=str(path.resolve()), artifact_path=artifact_path)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        values = metrics_as_floats(metrics)
        if self._shipper is None:
            raise RuntimeError("MlflowTracker: call start() first")
        with self._lock:
            self.metrics_file.append(values, step, run_id=self.run_id)
            if not any(k.startswith("system/") for k in values):
                self.last_step = max(self.last_step, int(step))
        self._wake.set()

    def finish(self, status: RunStatus = "FINISHED") -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
        if self._shipper is None:
            return
        if self._sampler is not None:
            self._sampler.stop()
        self._record("finish", status=status)
        self._stop.set()
        self._wake.set()
        self._thread.join()
        if not self._complete:
            ops, rows = self._shipper.pending()
            logger.warning(
                "MLflow at %s still unreachable after %.0f s: %d operation(s) and %d metric row(s) of run %s are "
                "only in %s. When the server is back, run `%s` to complete the run in MLflow.",
                self.uri,
                self.finish_timeout_s,
                ops,
                rows,
                self.run_id or "(not created yet)",
                self.run_dir,
                sync_command(self.run_dir),
            )
