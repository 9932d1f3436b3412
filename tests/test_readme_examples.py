"""The README's commands and code snippets run as printed (on the committed demo models and shards)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from unitrans_ds.adapters import prepare_model, save_adapter
from unitrans_ds.config import load_config
from unitrans_ds.models.build import load_backbone

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _demo_eval_commands() -> list[list[str]]:
    """`deepspeed launchers/eval.py --config configs/demo_*.yaml ...` lines of the README."""
    lines = re.findall(r"^deepspeed (launchers/eval\.py --config configs/demo_\S+ .*)$", README, flags=re.M)
    return [shlex.split(line) for line in lines]


def test_readme_shows_a_demo_eval_example():
    assert _demo_eval_commands(), "the README's Evaluation section should show an eval command on a demo config"


@pytest.mark.slow
@pytest.mark.parametrize("argv", _demo_eval_commands(), ids=lambda a: a[2])
def test_readme_eval_example_runs_on_the_adapter_make_train_writes(argv, tmp_path):
    # `make train` runs the embedded default; write the adapter it would export (method at init) where the
    # example expects it, under tmp_path, then run the example's command as printed (plain python, one rank).
    i = argv.index("--adapter")
    adapter = tmp_path / argv[i + 1]
    cfg = load_config(None)
    bb = load_backbone(cfg.model, cfg.task, seed=cfg.train.seed)
    prepare_model(bb.model, cfg.method)
    save_adapter(bb.model, adapter, cfg.method, cfg.model.init_from, extra={"task": cfg.task})
    args = [*argv[:i], "--adapter", str(adapter), *argv[i + 2 :], "--out", str(tmp_path / "eval")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "eval" / "metrics.json").is_file()
