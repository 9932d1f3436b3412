"""Process-group set-up and tear-down; the collectives themselves are in `unitrans_ds/collectives.py`."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def import_deepspeed():
    """`import deepspeed`, without the MLflow import DeepSpeed does on the way when this process has none yet.

    DeepSpeed's autotuner imports mlflow at import time (`try: import mlflow`), 2.3 s of CPU for every rank,
    though only its autotuning (run by the `deepspeed` runner, never by a rank) logs to it. A rank that tracks
    imports mlflow itself when its tracker starts; the others, and runs with tracking off, need not pay. Marking
    the module absent while DeepSpeed loads makes its `try` fail as on a machine without mlflow; the mark goes
    right after, so a later `import mlflow` works. (`importlib.util.LazyLoader` cannot do it: torch scans
    `sys.modules` for `__file__` while DeepSpeed loads, which loads a lazy module anyway.)
    """
    if "deepspeed" in sys.modules or "mlflow" in sys.modules:
        import deepspeed

        return deepspeed
    sys.modules["mlflow"] = None  # `import mlflow` raises ImportError while this is set
    try:
        import deepspeed
    finally:
        del sys.modules["mlflow"]
    return deepspeed


def init_distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank). Under the `deepspeed` launcher the environment is set; a plain
    `python launchers/train.py` runs as a single rank with a one-process group (DeepSpeed needs one)."""
    deepspeed = import_deepspeed()

    if "RANK" not in os.environ:
        os.environ.update(
            RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port())
        )
    if not dist.is_initialized():
        prefer_this_environments_ninja()
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if os.environ["WORLD_SIZE"] == "1":
            # One rank has no peer to meet: an in-memory store instead of a TCP store on MASTER_PORT, which a
            # process running several jobs in turn (the transfer benchmark's workers) would bind again later,
            # when another process may have taken the port meanwhile (EADDRINUSE). DeepSpeed adopts the group.
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        deepspeed.init_distributed(dist_backend=backend)
        _unlink_shm_workspace()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    elif "OMP_NUM_THREADS" not in os.environ:
        # CPU ranks on one machine share its cores: more threads than cores makes OpenMP spin-wait, and steps
        # get many times slower. Split the cores between the local ranks.
        local = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or dist.get_world_size())
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
    return dist.get_rank(), dist.get_world_size(), local_rank


def prefer_this_environments_ninja() -> None:
    """Put this environment's `ninja` first on PATH before DeepSpeed JIT-builds its CPU communication op.

    torch builds the op with the first `ninja` on PATH into one shared cache folder. pip installs a recent ninja
    into the environment (1.13 here) and many systems have an older one (Ubuntu's 1.11); their build logs hash
    commands differently, so each takes the other's build for a changed command and compiles the op again from
    scratch: 35 to 100 s at every start that follows one made with the other ninja. The two alternate in practice:
    ranks under the `deepspeed` launcher find the environment's bin first on PATH, a plain `python -m` without an
    activated environment does not."""
    here = Path(sys.executable).parent
    if (here / "ninja").is_file() and shutil.which("ninja") != str(here / "ninja"):
        os.environ["PATH"] = os.pathsep.join([str(here), os.environ.get("PATH", "")])


def shm_workspace_path(rank: int) -> Path:
    """Where DeepSpeed's CPU all-reduce keeps this rank's shared workspace (its `shm.cpp`: one segment of about
    66 MB per rank, named after the user, MASTER_ADDR and MASTER_PORT, created when all ranks are local)."""
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    return Path("/dev/shm") / f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}"


def _unlink_shm_workspace() -> None:
    """Remove the name of this rank's shared all-reduce workspace once every rank has mapped every workspace.

    DeepSpeed creates the segments and never unlinks them, so each CPU run under the `deepspeed` launcher left
    66 MB per rank in /dev/shm (RAM) until reboot: a machine running tests filled its memory with them. Unlinked
    after the barrier, the mappings stay valid and the memory is freed when the ranks exit, killed or not."""
    # DeepSpeed's condition for the segments (shm_interface.cpp), the same on every rank: CPU ranks, all local
    if torch.cuda.is_available() or int(os.environ.get("LOCAL_SIZE") or 0) != dist.get_world_size():
        return
    dist.barrier()  # every rank has opened the others' segments: initialisation waits for them before returning
    shm_workspace_path(dist.get_rank()).unlink(missing_ok=True)


def pin_cpu_threads(threads: int) -> None:
    """Fix torch's intra-op CPU thread count (`train.cpu_threads`), so results do not depend on the machine.

    CPU kernels split reductions (sums, matmul blocks) between threads, so the float rounding, and through a
    chaotic optimisation the whole run, changes with the thread count (the embedded default once gave val r_mean
    9.7 with 2 threads and 17.3 with 1). A fixed count makes a run bit-identical whatever `OMP_NUM_THREADS` or the
    core count is. `0` keeps `init_distributed`'s choice (the cores split between local ranks): faster on a big
    CPU, reproducible only on the same machine. CUDA kernels do not read it.
    """
    if threads > 0:
        torch.set_num_threads(threads)


def shutdown_distributed() -> None:
    """Tear the process group down; every entry point that may have initialised one calls it before exit.

    Call it after the last collective, on success, error and stop alike (a `finally`). A group left to the
    interpreter's exit is destroyed during static destruction, while gloo's worker threads (and the TCP store's)
    may still be joinable: the C++ runtime then aborts a finished run with `terminate called without an active
    exception` (SIGABRT), at random. Local only: no collective, so a rank that fails alone does not hang here.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
