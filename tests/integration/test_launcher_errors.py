"""Bad input through the real `deepspeed` launcher: exit status 2 and one line, from rank 0 only (the in-process
checks of the same messages are in tests/unit/test_bad_input.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_two_ranks_print_one_line_from_rank_zero_and_exit_2(tmp_path):
    """fp16 on a CPU is found by every rank after the process group is up; only rank 0 says so."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    port = str(free_port())
    cmd = [str(BIN / "deepspeed"), "--num_accelerators", "2", "--master_port", port, "launchers/train.py",
           "train.precision=fp16", f"train.output_dir={tmp_path}", "model.init_from=tiny", "model.image_size=32",
           "data.val_shards=null", "data.test_shards=null"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert errors == [
        "error: train.precision is fp16 but there is no CUDA device (DeepSpeed's fp16 loss scaling needs one): "
        "set train.precision to auto or fp32"
    ]
    assert "Traceback" not in proc.stderr
