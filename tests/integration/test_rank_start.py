"""What a rank's start imports: DeepSpeed without the MLflow import its autotuner does on the way (2.3 s of CPU a
rank), while a later `import mlflow` (the tracking rank's) still works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECK = """
import sys
from unitrans_ds.engine.distributed import init_distributed, shutdown_distributed
init_distributed()
import deepspeed.autotuning.autotuner as autotuner
assert "mlflow" not in sys.modules and not autotuner.has_mlflow, sorted(m for m in sys.modules if "mlflow" in m)
import mlflow
from mlflow.tracking import MlflowClient
assert mlflow.get_tracking_uri() and MlflowClient
shutdown_distributed()
print("ok")
"""


def test_a_rank_starts_deepspeed_without_importing_mlflow_and_can_import_it_after():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
