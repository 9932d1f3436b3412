"""A fresh MLflow SQLite store for a test: a copy of one that MLflow created and migrated once in this process.

Creating a SQLite store runs MLflow's schema migrations, about 3 s of CPU each time; the suite makes some twenty
stores. A copy of a store MLflow just made is the same database (its schema version and its `Default`
experiment), so the code under test meets a real, empty store without paying for the migrations again. The
first-use path, where MLflow itself creates the store, stays tested where it is the point: the default store
that `mlflow ui` serves (test_tracking_outage.py) and `resolve_tracking_uri` (test_tracking.py).
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path


@functools.cache
def _template() -> Path:
    from mlflow.tracking import MlflowClient

    path = Path(tempfile.mkdtemp(prefix="mlflow_template_")) / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()  # creates and migrates the schema
    return path


def fresh_sqlite_uri(path: Path) -> str:
    """`sqlite:///<path>` holding an empty store (`path` must not exist yet)."""
    if path.exists():
        raise FileExistsError(f"{path} exists: a fresh store needs a new path")
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_template(), path)
    return f"sqlite:///{path}"
