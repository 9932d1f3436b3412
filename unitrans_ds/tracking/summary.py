"""The end-of-run summary: one table a person reads, instead of a JSON blob.

[unitrans_ds] results (MLflow run 3f2a..., see `mlflow ui`)
  metric  val_before         val        test
  r_mean        21.4       48.75        47.1
  txt_r1          30          60          58
[unitrans_ds] run folder: runs/demo_retrieval
"""

from __future__ import annotations

import math
from pathlib import Path

COLUMNS = ("val_before", "val", "test")


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    return f"{value:.4g}"  # 4 significant digits: 43.75 recall, 0.5123 CIDEr, 0 and 100 without noise


def summary_table(metrics: dict[str, float], run_dir: str | Path, run_id: str | None = None) -> str:
    """Rows: each score; columns: `val_before` (zero-shot), `val`, `test`, where present. Counts are left out."""
    by_split: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        split, _, name = key.partition("/")
        if name:
            by_split.setdefault(split, {})[name] = value
    columns = [c for c in COLUMNS if c in by_split] + sorted(set(by_split) - set(COLUMNS) - {"val_info", "test_info"})
    where = f"MLflow run {run_id}, see `mlflow ui`" if run_id else "not in MLflow"
    lines = [f"[unitrans_ds] results ({where})"]
    names = sorted({n for c in columns for n in by_split[c]})
    if names:
        width = max(len("metric"), *(len(n) for n in names))
        lines.append("  " + "metric".ljust(width) + "".join(f"{c:>12}" for c in columns))
        for name in names:
            lines.append("  " + name.ljust(width) + "".join(f"{_cell(by_split[c].get(name)):>12}" for c in columns))
    else:
        lines.append("  no evaluation metrics (no val or test shards, or the run stopped early)")
    lines.append(f"[unitrans_ds] run folder: {run_dir}")
    return "\n".join(lines)
