"""DeepSpeed's CPU communication op is compiled once per environment, not again at every start.

torch JIT-builds it with the first `ninja` on PATH. With two ninjas (the environment's, which DeepSpeed requires,
and a system one of another version) each took the other's build log for a changed command and recompiled the op
from scratch (35-100 s) whenever the other had built it last: ranks under the `deepspeed` launcher find the
environment's bin first on PATH, a plain `python -m` does not, and so each alternating start paid a compile."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SYSTEM_PATH = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != BIN)
START = "from unitrans_ds.engine.distributed import init_distributed as i, shutdown_distributed as s; i(); s()"


def _built_op() -> Path:
    from torch.utils.cpp_extension import get_default_build_root  # TORCH_EXTENSIONS_DIR, else the user cache

    (so,) = Path(get_default_build_root()).glob("*/deepspeed_shm_comm/deepspeed_shm_comm.so")
    return so


def _start(path: str) -> None:
    env = {**os.environ, "PATH": path}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-c", START], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.skipif(not (BIN / "ninja").is_file(), reason="the environment has no ninja of its own")
@pytest.mark.skipif(shutil.which("ninja", path=SYSTEM_PATH) is None, reason="no second ninja on the system")
def test_the_op_is_not_rebuilt_when_a_start_finds_another_ninja_first(tmp_path):
    _start(os.pathsep.join([str(BIN), SYSTEM_PATH]))  # as a rank under the launcher: builds it if needed
    built = _built_op().stat().st_mtime_ns
    _start(SYSTEM_PATH)  # as a plain `python` without the environment activated
    assert _built_op().stat().st_mtime_ns == built, "the op was compiled again"
