"""Resume checkpoints through DeepSpeed: trainable state only, written by every rank, crash-safe.

Layout of `<run>/checkpoints/`: one folder per tag (`step_000040`), DeepSpeed's files inside, plus our
`train_state.json` (step, epoch, samples seen, MLflow run id, best metric) and one `rng_rank<R>.pt` per rank.
A tag counts only once it holds the `COMPLETE` marker, written by rank 0 after every rank finished; `latest`
is then replaced atomically. A crash mid-save leaves an incomplete folder that `latest` never names, so the
previous checkpoint stays the one to resume from.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import random
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..collectives import any_rank, barrier

COMPLETE = "COMPLETE"
LATEST = "latest"
_MARK = "ok\n"


@dataclass
class TrainState:
    """Everything besides the tensors that a resumed run needs to continue exactly where it stopped."""

    step: int = 0  # optimizer steps done
    micro_step: int = 0  # forward/backward passes done
    epoch: int = 0
    step_in_epoch: int = 0  # micro steps into `epoch`
    samples_seen: int = 0
    mlflow_run_id: str | None = None
    best_metric: float | None = None
    best_step: int | None = None
    world_size: int = 0  # ranks that wrote the checkpoint (0: not recorded)
    extra: dict = field(default_factory=dict)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or resumed from (full disk, other world size, missing tensors)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file holds something other than tensors and plain data: it is refused, never unpickled."""


def rng_state() -> dict:
    """The RNG states as tensors, lists and numbers only, so that the file loads with `weights_only=True`."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(mt), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def safe_load(path: str | Path, map_location=None, mmap: bool = False):
    """`torch.load` that only rebuilds tensors and plain containers (plus DeepSpeed's own small config classes).

    A pickle that would run code or build any other object raises `UnsafeCheckpointError` naming the file: a
    checkpoint folder passed to `--resume` is user input, and unpickling it would run whatever it holds.
    """
    try:
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeCheckpointError(
            f"{path} holds more than tensors and plain data ({first[:200]}); refusing to load it. Resume only from "
            "checkpoints written by unitrans_ds, or delete that checkpoint folder"
        ) from None
    except (RuntimeError, EOFError) as e:  # not a torch file at all, or one cut short
        raise CheckpointError(
            f"{path} is not a readable checkpoint file ({str(e).strip()[:200]}); resume from another checkpoint "
            "or delete this one"
        ) from None


def _is_complete(tag_dir: Path) -> bool:
    """The marker exists with its content: a 0-byte marker (a write cut short by a full disk) does not count."""
    try:
        return (tag_dir / COMPLETE).read_text() == _MARK
    except OSError:
        return False


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Complete checkpoint tags, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p.name for p in ckpt_dir.iterdir() if _is_complete(p))


def latest_tag(ckpt_dir: Path) -> str | None:
    f = ckpt_dir / LATEST
    if f.is_file():
        tag = f.read_text().strip()
        if tag and _is_complete(ckpt_dir / tag):
            return tag
    tags = complete_tags(ckpt_dir)
    return tags[-1] if tags else None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _agree_written(error: BaseException | None, target: Path, device) -> None:
    """Collective (it is also the barrier): raise on every rank when writing failed on any rank."""
    if any_rank(error is not None, device):
        what = f"{error}" if error is not None else "another rank failed to write its part"
        raise CheckpointError(
            f"could not write checkpoint {target} ({what}); free disk space under {target.parent} or set "
            "train.output_dir elsewhere. The previous complete checkpoint is still the one --resume uses"
        )


def save_checkpoint(engine, ckpt_dir: Path, state: TrainState, rank: int, keep_last: int) -> str:
    """Collective: every rank calls it. Returns the tag written. Raises CheckpointError on every rank when any
    rank could not write (e.g. a full disk); the tag then stays incomplete and is never resumed from."""
    tag = f"step_{state.step:06d}"
    target = ckpt_dir / tag
    device = engine.device
    state.world_size = dist.get_world_size() if dist.is_initialized() else 1
    if rank == 0 and target.exists():  # a leftover of a crash at this very step
        shutil.rmtree(target)
    barrier()
    error = None
    try:
        engine.save_checkpoint(
            str(ckpt_dir),
            tag=tag,
            client_state={"train_state": dataclasses.asdict(state)},
            save_latest=False,
            exclude_frozen_parameters=True,
        )
        torch.save(rng_state(), target / f"rng_rank{rank}.pt")
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        error = e
    _agree_written(error, target, device)
    error = None
    if rank == 0:
        try:
            (target / "train_state.json").write_text(json.dumps(dataclasses.asdict(state), indent=2))
            _write_atomic(target / COMPLETE, _MARK)  # last: only now does the tag count
            _write_atomic(ckpt_dir / LATEST, tag)
            for old in complete_tags(ckpt_dir)[:-keep_last]:
                shutil.rmtree(ckpt_dir / old, ignore_errors=True)
        except OSError as e:
            error = e
            with contextlib.suppress(OSError):
                (target / COMPLETE).unlink()
    _agree_written(error, target, device)
    return tag


def load_checkpoint(engine, ckpt_dir: Path, rank: int, trainable_names: set[str]) -> TrainState:
    """Collective. Restores module, optimizer, scheduler, RNG and the train state from the latest complete tag."""
    tag = latest_tag(ckpt_dir)
    if tag is None:
        raise CheckpointError(
            f"no complete checkpoint in {ckpt_dir}; start without `train.resume`, or point it at a run folder "
            "that has checkpoints/"
        )
    _check_world_size(ckpt_dir / tag)
    _check_files(ckpt_dir / tag, engine.device)
    # Frozen weights are not in the checkpoint (they come from the base model), so the module load is non-strict;
    # we check below that every trainable tensor was in it.
    # DeepSpeed's own loader calls torch.load(weights_only=False) on its files: route it through `safe_load`.
    ds_loader = engine.checkpoint_engine
    ds_loader.load = safe_load
    try:
        path, client = engine.load_checkpoint(
            str(ckpt_dir), tag=tag, load_module_strict=False, load_optimizer_states=True, load_lr_scheduler_states=True
        )
    finally:
        del ds_loader.load  # back to the class's method
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load checkpoint {ckpt_dir / tag}")
    saved = _saved_module_keys(ckpt_dir / tag)
    if saved is not None:
        missing = sorted(n for n in trainable_names if n not in saved)
        if missing:
            raise CheckpointError(
                f"checkpoint {ckpt_dir / tag} does not hold trainable tensors {missing[:5]}: it was written for "
                "another method or model; resume with the config it was trained with"
            )
    rng_file = ckpt_dir / tag / f"rng_rank{rank}.pt"
    if rng_file.is_file():
        set_rng_state(safe_load(rng_file))
    return TrainState(**client["train_state"])


def _check_files(tag_dir: Path, device) -> None:
    """Collective: every rank checks every file of the tag before any rank loads one, so that a bad file that
    only one rank would read (its RNG or optimizer shard) stops all ranks alike instead of hanging the others.
    `mmap` unpickles without reading the tensor bytes, so this costs little even for large shards."""
    error = None
    try:
        for f in sorted(tag_dir.rglob("*.pt")):
            safe_load(f, map_location="cpu", mmap=zipfile.is_zipfile(f))  # mmap needs torch's zip format
    except CheckpointError as e:
        error = e
    if any_rank(error is not None, device):
        raise error or CheckpointError(f"another rank found a file it refuses to load in {tag_dir}")


def _check_world_size(tag_dir: Path) -> None:
    """ZeRO shards optimizer state per rank: a checkpoint resumes only on as many ranks as wrote it."""
    saved = 0
    with contextlib.suppress(OSError, ValueError, AttributeError):
        saved = int(json.loads((tag_dir / "train_state.json").read_text()).get("world_size", 0))
    now = dist.get_world_size() if dist.is_initialized() else 1
    if saved and saved != now:
        raise CheckpointError(
            f"checkpoint {tag_dir} was written by {saved} ranks and this run has {now}; resume with "
            f"{saved} ranks (deepspeed --num_accelerators {saved} ...), or start a new run without --resume"
        )


def _saved_module_keys(tag_dir: Path) -> set[str] | None:
    files = sorted(tag_dir.glob("mp_rank_00_model_states.pt")) or sorted(tag_dir.glob("*model_states.pt"))
    if not files:
        return None
    sd = safe_load(files[0], map_location="cpu")
    module = sd.get("module") or {}
    return set(module)


def _deepspeed_safe_globals() -> list:
    """Classes DeepSpeed pickles into its own checkpoint files besides tensors (config enums, loss scaler)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


def logged_after(metrics_file: Path, step: int) -> dict[int, set[str]]:
    """{step: metric names} already in the run's metrics file for steps after `step` (the checkpoint resumed from).

    A line cut short by a crash is ignored. Used so that a resumed run logs each step once.
    """
    done: dict[int, set[str]] = {}
    if not metrics_file.is_file():
        return done
    for line in metrics_file.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step:
            done.setdefault(row["step"], set()).update(k for k in row if k not in ("step", "time", "run_id"))
    return done
