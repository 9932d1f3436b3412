"""A training run is bit-identical whatever OMP_NUM_THREADS is (`train.cpu_threads` pins the math's threads).

The embedded default once gave val r_mean 9.7 with 2 threads and 17.3 with 1 from the same seed: CPU kernels split
reductions between threads, so the rounding, and through training the result, depends on the thread count. The
runs are separate processes of the real launcher, on the embedded default (the committed tiny retrieval BLIP on
the committed demo shards), whose matrices are large enough for torch to split work between threads.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.launchers import train_in_process
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["train.max_steps=3", "train.zero_shot_eval=false", "data.val_shards=null", "data.test_shards=null",
        "tracking.enabled=false"]  # fmt: skip


def train(out: Path, omp_threads: int, *overrides: str) -> dict:
    """Three steps of the embedded default in its own process with OMP_NUM_THREADS set; its adapter tensors."""
    env = {**os.environ, "OMP_NUM_THREADS": str(omp_threads), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "launchers/train.py", "--ds_config", "ds_configs/zero0.json", *ARGS,
           f"train.output_dir={out}", *overrides]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return load_file(str(out / "adapter_final" / "adapter_model.safetensors"))


def differing(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not (a[k] == b[k]).all()]


@pytest.mark.slow
def test_adapters_are_bit_identical_for_any_omp_num_threads(tmp_path, monkeypatch):
    one = train(tmp_path / "omp1", 1)
    two = train(tmp_path / "omp2", 2)
    assert differing(one, two) == []
    # the control: with the thread count left alone (cpu_threads=0), 2 threads round differently, so this setup
    # does see a thread-count dependence when nothing pins it (the launcher's main() in this process, at 2 threads)
    monkeypatch.chdir(ROOT)  # the embedded default's paths, as the processes above see them
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert train_in_process([*ARGS, f"train.output_dir={tmp_path / 'free2'}", "train.cpu_threads=0"], "zero0") == 0
    finally:
        torch.set_num_threads(saved)
    free = load_file(str(tmp_path / "free2" / "adapter_final" / "adapter_model.safetensors"))
    assert differing(one, free), "the control run matched: the test no longer exercises multi-threaded kernels"
