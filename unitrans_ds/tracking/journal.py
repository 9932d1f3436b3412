"""The run folder's record of what was sent to MLflow: the journal of operations and the metric rows.

Everything a run logs is written here first, before MLflow sees it, so the run folder is the source of truth
and MLflow is a copy that can always be completed later (`python -m unitrans_ds.tracking.sync RUN_DIR`):

- `metrics.jsonl`: one row per `log_metrics` call, `{"run_id", "step", "time", "<name>": value, ...}`.
- `mlflow_journal.jsonl`: every other call in order (`start`, `params`, `tags`, `artifact`, `dict`, `inputs`,
  `finish`), one JSON object a line.
- `mlflow_sync.json`: how far the journal and the metrics file have reached MLflow, and the run id.

Files are appended line by line and opened per call, so a killed process loses at most a torn last line,
which readers skip.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
JOURNAL_FILE = "mlflow_journal.jsonl"
CURSOR_FILE = "mlflow_sync.json"
ROW_KEYS = ("run_id", "step", "time")


def _append_line(path: Path, record: dict) -> int:
    """Append one JSON line; returns the file size before it (the line's offset)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        offset = f.tell()
        f.write(json.dumps(record, default=str) + "\n")
    return offset


def _complete_lines(path: Path, offset: int = 0) -> list[tuple[int, dict]]:
    """(end offset, record) of every complete line from `offset`; a torn last line (no newline) is left out."""
    if not path.is_file():
        return []
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read()
    out, pos = [], offset
    for raw in data.split(b"\n")[:-1]:  # the part after the last newline is empty or torn
        pos += len(raw) + 1
        if raw.strip():
            out.append((pos, json.loads(raw)))
    return out


class MetricsFile:
    """`<run_dir>/metrics.jsonl`: the durable record of every metric point (NaN and inf as strings: strict JSON)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / METRICS_FILE

    def size(self) -> int:
        return self.path.stat().st_size if self.path.is_file() else 0

    def append(self, metrics: dict[str, float], step: int, run_id: str | None = None) -> None:
        """One row; nothing at all for an empty `metrics` (a row without values would only add noise)."""
        if not metrics:
            return
        row: dict[str, Any] = {"step": int(step), "time": round(time.time(), 3)}
        if run_id:
            row = {"run_id": run_id, **row}
        row.update({k: v if math.isfinite(v) else str(v) for k, v in metrics.items()})
        _append_line(self.path, row)

    def rows(self, offset: int = 0) -> list[tuple[int, dict]]:
        """(end offset, row) of each complete row from byte `offset`."""
        return _complete_lines(self.path, offset)


def row_values(row: dict) -> dict[str, float]:
    """The metric values of a row, strings such as "nan" back to floats."""
    return {k: float(v) for k, v in row.items() if k not in ROW_KEYS}


class Journal:
    """`<run_dir>/mlflow_journal.jsonl`: the ordered non-metric operations of the run folder's MLflow run."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / JOURNAL_FILE

    def append(self, op: str, **fields: Any) -> None:
        _append_line(self.path, {"op": op, "time": round(time.time(), 3), **fields})

    def ops(self) -> list[dict]:
        return [record for _, record in _complete_lines(self.path)]

    def segment(self) -> tuple[int, list[dict]]:
        """(index of the run's first op, the ops from there): the latest run that did not continue an older one.

        A folder reused for a new run keeps the old lines; the new run starts at its own `start` op that has no
        `resume_run_id`. A resumed run continues the segment of the run it resumes.
        """
        ops = self.ops()
        first = 0
        for i, op in enumerate(ops):
            if op["op"] == "start" and not op.get("resume_run_id"):
                first = i
        return first, ops[first:]


def read_cursor(run_dir: str | Path) -> dict:
    path = Path(run_dir) / CURSOR_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_cursor(run_dir: str | Path, cursor: dict) -> None:
    """Atomic (write then rename): a kill never leaves a half-written cursor."""
    path = Path(run_dir) / CURSOR_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(cursor, indent=1))
    os.replace(tmp, path)


def recorded_run_id(run_dir: str | Path) -> str | None:
    """The MLflow run id a run folder was logged to (from `mlflow_sync.json`, else the last row of `metrics.jsonl`)."""
    run_id = read_cursor(run_dir).get("run_id")
    if run_id:
        return run_id
    for _, row in reversed(MetricsFile(run_dir).rows()):
        if row.get("run_id"):
            return row["run_id"]
    return None
