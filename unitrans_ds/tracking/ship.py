"""`Shipper`: brings one MLflow run up to date with its run folder (journal, then metric rows), resumably.

Used by the tracker's background thread while training runs, and by `python -m unitrans_ds.tracking.sync`
after an outage. Each call to `ship()` continues where the last successful one stopped (the cursor in
`mlflow_sync.json`), so an MLflow failure at any point only means "try again later": nothing is lost and,
because every metric keeps the timestamp written in `metrics.jsonl`, a point sent twice is the same point
(MLflow's SQL stores drop exact duplicates; `dedup=True` checks the run's history first for any store).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .journal import Journal, MetricsFile, read_cursor, row_values, write_cursor
from .params import truncate_value

logger = logging.getLogger(__name__)


class Shipper:
    """Applies `<run_dir>`'s journal and `metrics.jsonl` to MLflow at `uri`. Raises whatever MLflow raises."""

    def __init__(self, run_dir: str | Path, uri: str, dedup: bool = False):
        from mlflow.tracking import MlflowClient

        self.run_dir = Path(run_dir)
        self.uri = uri
        self.dedup = dedup
        self.client = MlflowClient(tracking_uri=uri)
        self.journal = Journal(run_dir)
        self.metrics = MetricsFile(run_dir)
        self.cursor = read_cursor(run_dir)
        self._params: dict[str, str] | None = None
        self._history: dict[str, set] = {}
        self.sent_points = 0

    @property
    def run_id(self) -> str | None:
        return self.cursor.get("run_id")

    # ------------------------------------------------------------------ the cursor
    def _align(self, first: int, ops: list[dict]) -> None:
        """A new segment (a new run in a reused folder) or another server starts the cursor afresh."""
        same = self.cursor.get("segment") == first and self.cursor.get("uri") == self.uri
        run_id = self.cursor.get("run_id") if same else None
        if not same or self.dedup:
            self.cursor = {
                "uri": self.uri,
                "segment": first,
                "run_id": run_id,
                "ops_done": 0,
                "metrics_offset": int(ops[0].get("metrics_offset", 0)) if ops else 0,
            }

    def _save(self) -> None:
        write_cursor(self.run_dir, self.cursor)

    # ------------------------------------------------------------------ shipping
    def pending(self) -> tuple[int, int]:
        """(journal ops, metric rows) of the current run not yet in MLflow."""
        first, ops = self.journal.segment()
        self._align(first, ops)
        return len(ops) - self.cursor["ops_done"], len(self.metrics.rows(self.cursor["metrics_offset"]))

    def ship(self) -> bool:
        """Send everything pending. True when the run is complete in MLflow (its final status included)."""
        first, ops = self.journal.segment()
        if not ops:
            return True
        self._align(first, ops)
        last_is_finish = ops[-1]["op"] == "finish"
        end = len(ops) - 1 if last_is_finish else len(ops)
        while self.cursor["ops_done"] < end:
            self._apply(ops[self.cursor["ops_done"]])
            self.cursor["ops_done"] += 1
            self._save()
        self._ship_metrics()
        if last_is_finish and self.cursor["ops_done"] < len(ops):
            self._apply(ops[-1])
            self.cursor["ops_done"] += 1
            self._save()
        return self.cursor["ops_done"] == len(ops) and last_is_finish

    def _ship_metrics(self) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        batch: list = []
        end = self.cursor["metrics_offset"]

        def flush() -> None:
            if batch:
                self.client.log_batch(self.run_id, metrics=batch)
                self.sent_points += len(batch)
                batch.clear()
            self.cursor["metrics_offset"] = end
            self._save()

        for offset, row in self.metrics.rows(self.cursor["metrics_offset"]):
            ms, step = int(row["time"] * 1000), int(row["step"])
            points = [Metric(k, v, ms, step) for k, v in row_values(row).items() if not self._seen(k, v, ms, step)]
            if len(batch) + len(points) > MAX_METRICS_PER_BATCH:
                flush()
            for i in range(0, len(points), MAX_METRICS_PER_BATCH):  # a row wider than a batch
                batch.extend(points[i : i + MAX_METRICS_PER_BATCH])
                if len(batch) >= MAX_METRICS_PER_BATCH:
                    flush()
            end = offset
        flush()

    def _seen(self, key: str, value: float, ms: int, step: int) -> bool:
        if not self.dedup:
            return False
        if key not in self._history:
            self._history[key] = {
                (m.step, m.timestamp, m.value) for m in self.client.get_metric_history(self.run_id, key)
            }
        return (step, ms, value) in self._history[key]

    # ------------------------------------------------------------------ journal operations
    def _apply(self, op: dict) -> None:
        kind = op["op"]
        if kind == "start":
            self._start(op)
        elif kind == "params":
            self._log_params(op["params"])
        elif kind == "tags":
            self._set_tags(op["tags"])
        elif kind == "artifact":
            self._log_artifact(Path(op["path"]), op.get("artifact_path"))
        elif kind == "dict":
            self.client.log_dict(self.run_id, op["data"], op["name"])
        elif kind == "inputs":
            self._log_inputs(op["datasets"])
        elif kind == "finish":
            self.client.set_terminated(self.run_id, op["status"], end_time=int(op["time"] * 1000))
        else:
            raise ValueError(f"{self.journal.path}: unknown operation {kind!r}")

    def _start(self, op: dict) -> None:
        from mlflow.exceptions import MlflowException

        wanted = op.get("resume_run_id") or self.run_id
        if wanted:
            try:
                run = self.client.get_run(wanted)
                self.cursor["run_id"] = wanted
                self._params = dict(run.data.params)
                if op.get("resume_run_id"):
                    self.client.update_run(wanted, status="RUNNING")
            except MlflowException as e:
                if getattr(e, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                    raise
                logger.warning("MLflow run %s not found at %s: starting a new run", wanted, self.uri)
                op = {**op, "tags": {**op["tags"], "resumed_from_missing_run": wanted}}
                self.cursor["run_id"] = None
        if not self.run_id:
            experiment_id = self._experiment_id(op["experiment"])
            run = self.client.create_run(experiment_id, start_time=int(op["time"] * 1000), run_name=op["run_name"])
            self.cursor["run_id"] = run.info.run_id
            self._params = {}
            self._save()  # a retry must find this run, never create a second one
        self._set_tags(op["tags"])
        self._log_params(op["params"])

    def _experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            return self.client.create_experiment(name)
        if exp.lifecycle_stage == "deleted":  # a deleted experiment still owns its name; bring it back
            self.client.restore_experiment(exp.experiment_id)
        return exp.experiment_id

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        if self._params is None:
            self._params = dict(self.client.get_run(self.run_id).data.params)
        new, changed = {}, {}
        for key, value in params.items():
            text = truncate_value(value, MAX_PARAM_VAL_LENGTH)
            if key not in self._params:
                new[key] = text
            elif self._params[key] != text:
                changed[key] = text
        items = [Param(k, v) for k, v in new.items()]
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + MAX_PARAMS_TAGS_PER_BATCH])
        self._params.update(new)
        if changed:
            # MLflow params are write-once; a resumed run with new values keeps them as tags instead
            logger.warning("params changed since this MLflow run began, logged as `param_update.*` tags: %s", changed)
            self._set_tags({f"param_update.{k}": v for k, v in changed.items()})

    def _set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH

        items = [RunTag(k, truncate_value(v, MAX_TAG_VAL_LENGTH)) for k, v in tags.items()]
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=items[i : i + MAX_PARAMS_TAGS_PER_BATCH])

    def _log_artifact(self, path: Path, artifact_path: str | None) -> None:
        if not path.exists():
            logger.warning("artifact %s no longer exists; not logged to MLflow run %s", path, self.run_id)
        elif path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path or path.name)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def _log_inputs(self, datasets: list[dict[str, Any]]) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        have = set()
        if self.dedup:
            run = self.client.get_run(self.run_id)
            have = {(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs}
        inputs = [
            DatasetInput(
                Dataset(
                    d["name"], d["digest"], d["source_type"], json.dumps(d["source"]), profile=json.dumps(d["profile"])
                ),
                tags=[InputTag("mlflow.data.context", d["context"])],
            )
            for d in datasets
            if (d["name"], d["digest"]) not in have
        ]
        if inputs:
            self.client.log_inputs(self.run_id, datasets=inputs)
