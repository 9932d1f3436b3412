"""Resume checkpoints in one process: safe loading (no code from files), full disk, world size, logged steps.

A real DeepSpeed engine on a one-rank gloo group saves and loads a tiny model; the multi-rank stop and resume
runs are in test_stop_resume.py.
"""

from __future__ import annotations

import json
import pickle
import random
import resource
import signal

import numpy as np
import pytest
import torch
from helpers.ds_inprocess import forget_deepspeed_groups
from helpers.ports import free_port

from unitrans_ds.config import build_config
from unitrans_ds.engine.checkpoint import (
    COMPLETE,
    CheckpointError,
    TrainState,
    UnsafeCheckpointError,
    latest_tag,
    load_checkpoint,
    logged_after,
    rng_state,
    safe_load,
    save_checkpoint,
    set_rng_state,
)
from unitrans_ds.engine.ds_config import resolve_ds_config


@pytest.fixture(scope="module")
def gloo_group():
    import deepspeed
    import torch.distributed as dist

    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
            mp.setenv(k, v)
        mp.setenv("MASTER_PORT", str(free_port()))
        if not dist.is_initialized():
            dist.init_process_group("gloo", rank=0, world_size=1)
        deepspeed.init_distributed(dist_backend="gloo")
        yield
        dist.destroy_process_group()
        forget_deepspeed_groups()


def _engine(stage: str):
    import deepspeed

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    model[0].weight.requires_grad_(False)  # a frozen backbone weight, left out of the checkpoint
    params = [p for p in model.parameters() if p.requires_grad]
    ds = resolve_ds_config(stage, build_config({"train": {"global_batch_size": 2, "micro_batch_size": 2}}), 1, False)
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(params, lr=0.1), config=ds)
    loss = engine(torch.ones(2, 4)).sum()
    engine.backward(loss)
    engine.step()
    return engine


def _trainable(engine) -> set[str]:
    return {n for n, p in engine.module.named_parameters() if p.requires_grad}


class _Planted:
    """A pickle that would create a marker file when unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("stage", ["zero0", "zero2", "zero3"])
def test_checkpoint_round_trip_loads_every_file_weights_only(gloo_group, stage, tmp_path):
    engine = _engine(stage)
    random.seed(5)
    np.random.seed(5)
    save_checkpoint(engine, tmp_path, TrainState(step=3), rank=0, keep_last=2)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    for f in (tmp_path / "step_000003").rglob("*.pt"):
        safe_load(f)  # DeepSpeed's files and ours: tensors and plain data only
    state = load_checkpoint(_engine(stage), tmp_path, 0, _trainable(engine))
    assert state.step == 3 and state.world_size == 1
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_rng_state_round_trip():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


@pytest.mark.parametrize("victim", ["rng_rank0.pt", "mp_rank_00_model_states.pt"])
def test_planted_pickle_is_refused_and_never_runs(gloo_group, victim, tmp_path):
    engine = _engine("zero2")
    ckpt = tmp_path / "checkpoints"
    save_checkpoint(engine, ckpt, TrainState(step=2), rank=0, keep_last=2)
    marker = tmp_path / "pwned"
    torch.save({"module": _Planted(str(marker))}, ckpt / "step_000002" / victim)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint(_engine("zero2"), ckpt, 0, _trainable(engine))
    assert not marker.exists()
    assert victim in str(err.value) and "refusing to load it" in str(err.value)
    assert "\n" not in str(err.value)
    # a plain pickle (not torch's zip format) is refused the same way
    (ckpt / "step_000002" / victim).write_bytes(pickle.dumps(_Planted(str(marker))))
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(_engine("zero2"), ckpt, 0, _trainable(engine))
    assert not marker.exists()
    # a file cut short is a clear error too
    (ckpt / "step_000002" / victim).write_bytes(b"PK\x03\x04 cut")
    with pytest.raises(CheckpointError, match="is not a readable checkpoint file"):
        load_checkpoint(_engine("zero2"), ckpt, 0, _trainable(engine))


def test_failed_write_leaves_the_previous_checkpoint_as_latest(gloo_group, tmp_path):
    engine = _engine("zero2")
    save_checkpoint(engine, tmp_path, TrainState(step=1), rank=0, keep_last=2)
    # A file-size limit makes every write past 64 bytes fail, as a full disk does (EFBIG instead of ENOSPC).
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, old_limit[1]))
    try:
        with pytest.raises(CheckpointError, match="could not write checkpoint .*step_000002.*free disk space"):
            save_checkpoint(engine, tmp_path, TrainState(step=2), rank=0, keep_last=2)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert latest_tag(tmp_path) == "step_000001"
    # a 0-byte marker (a write cut short) does not make a tag complete
    (tmp_path / "step_000002").mkdir(exist_ok=True)
    (tmp_path / "step_000002" / COMPLETE).write_text("")
    (tmp_path / "latest").write_text("step_000002")
    assert latest_tag(tmp_path) == "step_000001"


def test_resume_with_another_world_size_is_refused(gloo_group, tmp_path):
    engine = _engine("zero2")
    save_checkpoint(engine, tmp_path, TrainState(step=1), rank=0, keep_last=2)
    state_file = tmp_path / "step_000001" / "train_state.json"
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "world_size": 2}))
    with pytest.raises(CheckpointError, match="written by 2 ranks and this run has 1; resume with 2 ranks"):
        load_checkpoint(_engine("zero2"), tmp_path, 0, _trainable(engine))


def test_logged_after_reads_what_a_stopped_run_logged(tmp_path):
    f = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "time": 0.0, "train/loss": 1.0} for s in range(1, 6)] + [{"step": 5, "val/r_mean": 2.0}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"step": 6, "train/lo')  # the last line cut by a crash
    assert logged_after(f, 3) == {4: {"train/loss"}, 5: {"train/loss", "val/r_mean"}}
    assert logged_after(tmp_path / "none.jsonl", 0) == {}
