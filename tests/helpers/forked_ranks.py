"""Multi-rank runs of launchers/train.py whose ranks are forked from a server that imported the stack once.

Each rank started by `torchrun` is a fresh interpreter that imports torch, transformers, DeepSpeed (and its
ZeRO-2 reduction's Muon module, which imports torch's inductor) and MLflow: about 10 s of CPU per rank, most of a
tiny run's cost, and the suite's largest on a 2-core machine. Here the standard library's `forkserver` preloads
those modules once per test process; every rank is a fork of that clean, single-threaded server, sets its own
environment (RANK, WORLD_SIZE, MASTER_PORT, ... as torchrun would) and runs the launcher's `main()`: the real
launcher, trainer, DeepSpeed engine and gloo group, in separate processes.

What this does not exercise is a launcher process of its own: tests about the `deepspeed` launcher's signals,
exit codes and teardown (test_stop_resume.py's SIGTERM tests, test_teardown.py, test_launcher_errors.py,
test_eval_launcher.py) start it for real.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

from .ports import free_port

ROOT = Path(__file__).resolve().parents[2]
PRELOAD = [
    "torch",
    "transformers",
    "mlflow",
    "deepspeed",
    "deepspeed.runtime.zero.muon.muon_optimizer",
    "unitrans_ds.engine.trainer",
    "unitrans_ds.tasks.registry",
    "unitrans_ds.evaluation.runner",
]
_CONTEXT = None


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(PRELOAD)
    return _CONTEXT


def _rank_main(argv: list[str], env: dict[str, str], out: str, err: str) -> None:
    """One rank: this process's environment and output files, then the launcher's main(), exit with its code."""
    os.chdir(ROOT)
    os.environ.clear()
    os.environ.update(env)
    for stream, path in ((1, out), (2, err)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, stream)
        os.close(fd)
    from helpers.launchers import load_launcher

    try:
        code = load_launcher("train").main(argv)
    except SystemExit as e:  # argparse's --help and usage errors
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()  # what interpreter exit runs after `sys.exit(main())` (MLflow's flush, ...)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _torchrun_env(rank: int, world: int, port: int) -> dict[str, str]:
    """What torchrun sets for a rank on one machine."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip


def _run_all(procs: list, timeout: float, what: list[str]) -> None:
    """Start the ranks and wait for every one; a rank still running after `timeout` fails the call, and none is
    left behind."""
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout)
            if p.exitcode is None:
                raise subprocess.TimeoutExpired(what, timeout)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()


def _call(fn, rank: int, world: int, port: int, torchrun_env: bool, args: tuple, error_file: str) -> None:
    if torchrun_env:
        os.environ.update(_torchrun_env(rank, world, port))
    try:
        fn(*args) if torchrun_env else fn(rank, *args)
    except BaseException:
        Path(error_file).write_text(traceback.format_exc())
        os._exit(1)
    os._exit(0)


def spawn_ranks(fn, args: tuple, nprocs: int, torchrun_env: bool = False, timeout: float = 300) -> None:
    """`torch.multiprocessing.spawn(fn, args, nprocs)` with forked ranks: `fn(rank, *args)` in each. With
    `torchrun_env`, `fn(*args)` in an environment as torchrun sets it (RANK, WORLD_SIZE, MASTER_PORT, ...).
    A rank that raises fails the call with its traceback."""
    ctx, port, errors = _context(), free_port(), Path(tempfile.mkdtemp(prefix="ranks-"))
    procs = [
        ctx.Process(target=_call, args=(fn, r, nprocs, port, torchrun_env, args, str(errors / f"rank{r}.txt")))
        for r in range(nprocs)
    ]
    try:
        _run_all(procs, timeout, [str(fn)])
        failed = {r: p.exitcode for r, p in enumerate(procs) if p.exitcode}
        if failed:
            texts = "".join(f.read_text() for f in sorted(errors.glob("rank*.txt")))
            raise AssertionError(f"ranks exited with {failed}:\n{texts}")
    finally:
        shutil.rmtree(errors, ignore_errors=True)


def train_forked_ranks(argv: list[str], ranks: int, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node RANKS launchers/train.py ARGV` with forked ranks: the first non-zero exit code of
    the ranks (0 when all succeed) and their stdout and stderr, rank after rank, as torchrun would collect them."""
    ctx, port, logs = _context(), free_port(), Path(tempfile.mkdtemp(prefix="ranks-"))
    files = [(logs / f"rank{r}.out", logs / f"rank{r}.err") for r in range(ranks)]
    procs = [
        ctx.Process(target=_rank_main, args=(argv, {**env, **_torchrun_env(r, ranks, port)}, str(o), str(e)))
        for r, (o, e) in enumerate(files)
    ]
    try:
        _run_all(procs, timeout, ["forked ranks", *argv])
        stdout = "".join(o.read_text() for o, _ in files)
        stderr = "".join(e.read_text() for _, e in files)
    finally:
        shutil.rmtree(logs, ignore_errors=True)
    code = next((p.exitcode for p in procs if p.exitcode), 0)
    return subprocess.CompletedProcess(["forked ranks", *argv], code, stdout, stderr)
