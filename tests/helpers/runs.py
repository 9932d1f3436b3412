"""Short training runs for the integration tests: the shapes shards they read, their common overrides, the
launcher run as one rank, as two forked ranks or under `torchrun`, and the checks on its exit and adapters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from helpers.forked_ranks import train_forked_ranks
from helpers.ports import free_port
from unitrans_ds import make_shards

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def make_shapes(out: Path, split: str, n: int, shard_size: int, task_set: str = "image", seed: int = 0) -> Path:
    """Shards written by the make_shards command's main(), in this process (its own process is tested in
    tests/unit/test_make_shards.py)."""
    folder = out / split
    rc = make_shards.main(
        ["--format", "shapes", "--domain", "b", "--split", split, "--num-samples", str(n), "--shard-size",
         str(shard_size), "--task-set", task_set, "--seed", str(seed), "--out", str(folder), "--no-progress"]
    )  # fmt: skip
    assert rc == 0, f"make_shards failed for {folder}"
    return folder


def shapes_shards(root: Path) -> Path:
    """The train, val and test shards the runs of this file (and test_stop_resume.py) read."""
    make_shapes(root, "train", 64, 16)
    make_shapes(root, "val", 12, 6, seed=1)
    make_shapes(root, "test", 8, 4, seed=2)
    return root


def common(shards: Path, out: Path, steps: int = 3) -> list[str]:
    """Overrides of a short run of the tiny BLIP on `shapes_shards`, writing to `out`."""
    return [
        f"data.train_shards={shards / 'train'}",
        f"data.val_shards={shards / 'val'}",
        f"data.test_shards={shards / 'test'}",
        f"train.output_dir={out}",
        f"train.max_steps={steps}",
        "train.epochs=100",  # the step count decides (the schema's default is the demo's one epoch)
        "train.micro_batch_size=4",
        "train.global_batch_size=8",
        "train.log_every=1",
        "data.dataset=shapes-b",
        "train.zero_shot_eval=false",
        "model.init_from=tiny",
        "model.image_size=32",
        "method.rank=4",
        "eval.k_test=4",
        "eval.batch_size=8",
        "eval.vqa_k_test=8",
        "eval.max_length=8",
        "eval.min_length=2",
    ]


def no_gap_args(shards: Path, steps: int) -> list[str]:
    """`common` without val and test evaluation or tracking: runs whose adapters a test compares."""
    return [
        *common(shards, shards / "unused", steps=steps),
        "data.val_shards=null",
        "data.test_shards=null",
        "tracking.enabled=false",
    ]


def launch(
    args: list[str], ranks: int, env: dict | None = None, ds: str = "zero2", timeout: int = 420, torchrun: bool = False
):
    """Run launchers/train.py: as plain python for 1 rank; for 2 as `torchrun` would, with ranks forked from a
    server that imported the stack once (tests/helpers/forked_ranks.py: the launcher's main(), the trainer,
    DeepSpeed and gloo in two processes, without two fresh interpreters' imports, about 10 s of CPU each), or
    under the real `torchrun` (`torchrun=True`, which the README gives beside the `deepspeed` launcher). These
    tests are about the ranks' training; the `deepspeed` launcher's own behaviour (signals, exit codes, teardown,
    one error line, the README's commands) is tested where it matters (test_stop_resume.py, test_teardown.py,
    test_launcher_errors.py, test_eval_launcher.py)."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1", **(env or {})}
    argv = ["--ds_config", f"ds_configs/{ds}.json", *args]
    if ranks > 1 and not torchrun:
        return train_forked_ranks(argv, ranks, env, timeout)
    cmd = [sys.executable, "launchers/train.py", *argv]
    if ranks > 1:
        run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks)]
        cmd = [*run, "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *cmd[1:]]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def ok(proc) -> None:
    """Exit 0, and no rank aborted at exit (test_teardown.py: the abort came at random, so every run that ends
    in a real interpreter exit looks: one rank, or 2 under `torchrun`; forked ranks end in `os._exit`)."""
    assert proc.returncode == 0 and "terminate called" not in proc.stdout + proc.stderr, (
        f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    )


def shm_workspaces(port: int) -> list[str]:
    """DeepSpeed's shared all-reduce workspaces (/dev/shm, about 66 MB of RAM each) of a run on `port`: DeepSpeed
    never unlinks them; `init_distributed` does once every rank has mapped them, so a running job has none left
    for a kill -9 to leak."""
    return sorted(p.name for p in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"))


def assert_same_adapters(a_dir: Path, b_dir: Path) -> None:
    """The final adapters of two run folders are bit-identical."""
    a = load_file(str(a_dir / "adapter_final" / "adapter_model.safetensors"))
    b = load_file(str(b_dir / "adapter_final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{k} differs after resume")
