"""Stopping a run and resuming it: SIGTERM to one rank, to the whole process group (runner, launcher and ranks at
once, as a scheduler's job stop or Ctrl-C reach them), or to the `deepspeed` runner alone (its ranks must notice
that they are orphans): all ranks stop at one step, save, and a resume is exact, and the running job holds no
shared memory that a kill -9 could leak; and kill -9 of a one-rank run.
The signals go to real processes under the real `deepspeed` launcher."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.launchers import train_in_process
from helpers.ports import free_port
from helpers.runs import assert_same_adapters, launch, no_gap_args, ok, shapes_shards, shm_workspaces
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return shapes_shards(tmp_path_factory.mktemp("shards"))


def _wait_for_step(metrics: Path, step: int, proc, timeout: float = 300) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"run ended before step {step}: {proc.stderr.read()[-3000:] if proc.stderr else ''}")
        if metrics.is_file():
            steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines() if line.strip()]
            if steps and max(steps) >= step:
                return
        time.sleep(0.2)
    raise AssertionError("timed out waiting for training progress")


@pytest.mark.slow
def test_kill9_then_resume_equals_uninterrupted_run_and_logs_each_step_once(shards, tmp_path):
    # The uninterrupted run and the resume run in this process (the launcher's main); the run that is killed is a
    # process of its own. All three use this process's thread count, so that their sums are bitwise comparable.
    steps = 40  # enough that the kill at step 4 lands well before the end even when steps are fast
    base = [*no_gap_args(shards, steps), "train.save_every=3"]
    straight = tmp_path / "straight"
    assert train_in_process([*base, f"train.output_dir={straight}"]) == 0

    broken = tmp_path / "broken"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": str(torch.get_num_threads())}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "launchers/train.py", "--ds_config", "ds_configs/zero2.json", *base, f"train.output_dir={broken}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _wait_for_step(broken / "metrics.jsonl", 4, proc)  # past the step-3 checkpoint
    proc.kill()
    proc.wait(timeout=60)
    logged_before = {json.loads(x)["step"] for x in (broken / "metrics.jsonl").read_text().splitlines()}
    assert max(logged_before) > 3 and max(logged_before) < steps

    assert train_in_process([*base, f"train.output_dir={broken}", "--resume"]) == 0
    assert_same_adapters(straight, broken)
    rows = [json.loads(x) for x in (broken / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, steps + 1))  # each step once
    final = json.loads((broken / "final_metrics.json").read_text())
    assert final["data/lost_samples"] == 0 and final["train/steps"] == steps  # not `{}` without val/test

    # The checkpoint holds trainable state only: no frozen backbone tensor.
    tag = (broken / "checkpoints" / "latest").read_text()
    sd = torch.load(broken / "checkpoints" / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)
    a = load_file(str(straight / "adapter_final" / "adapter_model.safetensors"))
    assert set(sd["module"]) == {"model." + k for k in a}
    assert tag == f"step_{steps:06d}"


STOP_STEPS = 24


@pytest.fixture(scope="module")
def straight_two_ranks(shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight2")
    ok(launch([*no_gap_args(shards, STOP_STEPS), f"train.output_dir={out}"], ranks=2))
    return out


def _tree(runner_pid: int, timeout: float = 120) -> tuple:
    """(launcher, [rank 0, rank 1]) processes under a `deepspeed` runner, once both ranks run."""
    import psutil

    t0 = time.time()
    while time.time() - t0 < timeout:
        procs = psutil.Process(runner_pid).children(recursive=True)

        def cmdline(p) -> str:  # a short-lived child can exit between the listing and this read (CI, once)
            try:
                return " ".join(p.cmdline())
            except psutil.NoSuchProcess:
                return ""

        launcher = [p for p in procs if "deepspeed.launcher.launch" in cmdline(p)]
        ranks = [p for p in procs if "launchers/train.py" in cmdline(p) and p not in launcher]
        if launcher and len(ranks) == 2:
            return launcher[0], sorted(ranks, key=lambda p: int(p.environ()["RANK"]))
        time.sleep(0.2)
    raise AssertionError("the deepspeed launcher and two ranks did not start")


@pytest.mark.slow
@pytest.mark.parametrize("target", ["one_rank", "process_group", "runner"])
def test_sigterm_stops_both_ranks_at_one_step_and_resume_is_exact(target, shards, straight_two_ranks, tmp_path):
    import psutil

    out = tmp_path / "run"
    args = [*no_gap_args(shards, STOP_STEPS), f"train.output_dir={out}"]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    port = free_port()
    cmd = [str(BIN / "deepspeed"), "--num_accelerators", "2", "--master_port", str(port),
           "launchers/train.py", "--ds_config", "ds_configs/zero2.json", *args]  # fmt: skip
    log_file = tmp_path / "output.log"  # a file, not a pipe: nobody drains a pipe while the test waits
    with log_file.open("w") as log:
        runner = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        launcher, ranks = _tree(runner.pid)
        _wait_for_step(out / "metrics.jsonl", 2, runner)
        # DeepSpeed's shared all-reduce workspaces are unlinked while the job runs: not even kill -9 of the whole
        # job (nothing gets to clean up) can leave them in RAM until reboot, as every run once did
        assert shm_workspaces(port) == []
        t0 = time.time()
        if target == "one_rank":  # its peer learns of the stop through the step's collective
            ranks[1].send_signal(signal.SIGTERM)
        elif target == "process_group":  # every rank and the launcher's own handler, racing
            os.killpg(runner.pid, signal.SIGTERM)
        else:  # the runner dies without passing the signal on (one node: no handler): orphaned ranks stop
            runner.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs([launcher, *ranks], timeout=60)
        assert not alive, f"still running 60 s after SIGTERM to the {target}: {alive}"
        assert time.time() - t0 < 60
        runner.wait(timeout=30)
        output = log_file.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(runner.pid, signal.SIGKILL)  # whatever a failure left behind
    # the deepspeed launcher passes on a rank's 143 to the runner; a signalled runner dies of it (-15)
    assert runner.returncode == {"one_rank": 143, "process_group": -15, "runner": -15}[target], output[-3000:]
    assert "done:" not in output and "rerun the same command with --resume" in output, output[-3000:]
    assert "terminate called" not in output, output[-3000:]  # a stopped run tears its group down too
    tags = sorted(p.name for p in (out / "checkpoints").iterdir() if (p / "COMPLETE").is_file())
    assert len(tags) == 1 and (out / "checkpoints" / "latest").read_text() == tags[0]
    assert 2 <= int(tags[0].removeprefix("step_")) < STOP_STEPS
    assert {"rng_rank0.pt", "rng_rank1.pt"} <= {p.name for p in (out / "checkpoints" / tags[0]).iterdir()}
    assert not (out / "adapter_final").exists()

    if target == "one_rank":
        # Resuming is the same code whoever got the signal: checked where the stop is hardest to agree on (one
        # rank signalled, its peer must stop at the same step as it).
        ok(launch([*args, "--resume"], ranks=2))
        assert_same_adapters(straight_two_ranks, out)
