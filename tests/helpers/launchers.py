"""The launchers' `main()` run inside the test process (`train_in_process` for launchers/train.py): the real
launcher code, trainer and DeepSpeed (on a one-rank gloo group, as a plain `python launchers/train.py` run gets),
without a fresh interpreter importing torch, transformers and DeepSpeed again (10 s and more on a loaded 2-core
machine). Multi-rank runs, signals sent to processes and exit codes seen by a shell still need the real `deepspeed`
launcher (tests/integration)."""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import torch

from helpers.ds_inprocess import forget_deepspeed_groups

ROOT = Path(__file__).resolve().parents[2]
#: what `init_distributed` sets for a one-rank run; put back afterwards so that the next test starts clean
_RANK_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS")


@functools.cache
def load_launcher(name: str) -> ModuleType:
    """launchers/<name>.py as a module (the launchers are scripts, not part of the package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_launcher", ROOT / "launchers" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_in_process(args: list[str], ds: str = "zero2") -> int:
    """Exit status of `python launchers/train.py --ds_config ds_configs/<ds>.json ARGS`, run in this process."""
    saved = {k: os.environ.get(k) for k in _RANK_ENV}
    for k in _RANK_ENV:
        os.environ.pop(k, None)
    # without OMP_NUM_THREADS, init_distributed would set this process's thread count for the rest of the session
    os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    try:
        return load_launcher("train").main(["--ds_config", str(ROOT / "ds_configs" / f"{ds}.json"), *args])
    finally:
        forget_deepspeed_groups()  # main() destroyed its group; DeepSpeed must not hand it to a later engine
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
