"""Resume checkpoints through DeepSpeed: trainable state only, written by every rank, crash-safe.

Layout of `<run>/checkpoints/`: one folder per tag (`step_000040`), DeepSpeed's files inside, plus our
`train_state.json` (step, epoch, samples seen, MLflow run id, best metric) and one `rng_rank<R>.pt` per rank.
A tag counts only once it holds the `COMPLETE` marker, written by rank 0 after every rank finished; `latest`
is then replaced atomically. A crash mid-save leaves an incomplete folder that `latest` never names, so the
previous checkpoint stays the one to resume from.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .distributed import barrier

COMPLETE = "COMPLETE"
LATEST = "latest"


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
    extra: dict = field(default_factory=dict)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Complete checkpoint tags, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p.name for p in ckpt_dir.iterdir() if (p / COMPLETE).is_file())


def latest_tag(ckpt_dir: Path) -> str | None:
    f = ckpt_dir / LATEST
    if f.is_file():
        tag = f.read_text().strip()
        if (ckpt_dir / tag / COMPLETE).is_file():
            return tag
    tags = complete_tags(ckpt_dir)
    return tags[-1] if tags else None


def save_checkpoint(engine, ckpt_dir: Path, state: TrainState, rank: int, keep_last: int) -> str:
    """Collective: every rank calls it. Returns the tag written."""
    tag = f"step_{state.step:06d}"
    target = ckpt_dir / tag
    if rank == 0 and target.exists():  # a leftover of a crash at this very step
        shutil.rmtree(target)
    barrier()
    engine.save_checkpoint(
        str(ckpt_dir),
        tag=tag,
        client_state={"train_state": dataclasses.asdict(state)},
        save_latest=False,
        exclude_frozen_parameters=True,
    )
    torch.save(rng_state(), target / f"rng_rank{rank}.pt")
    barrier()
    if rank == 0:
        (target / "train_state.json").write_text(json.dumps(dataclasses.asdict(state), indent=2))
        (target / COMPLETE).write_text("ok\n")
        tmp = ckpt_dir / (LATEST + ".tmp")
        tmp.write_text(tag)
        os.replace(tmp, ckpt_dir / LATEST)
        for old in complete_tags(ckpt_dir)[:-keep_last]:
            shutil.rmtree(ckpt_dir / old, ignore_errors=True)
    barrier()
    return tag


def load_checkpoint(engine, ckpt_dir: Path, rank: int, trainable_names: set[str]) -> TrainState:
    """Collective. Restores module, optimizer, scheduler, RNG and the train state from the latest complete tag."""
    tag = latest_tag(ckpt_dir)
    if tag is None:
        raise FileNotFoundError(
            f"no complete checkpoint in {ckpt_dir}; start without `train.resume`, or point it at a run folder "
            "that has checkpoints/"
        )
    # Frozen weights are not in the checkpoint (they come from the base model), so the module load is non-strict;
    # we check below that every trainable tensor was in it.
    path, client = engine.load_checkpoint(
        str(ckpt_dir), tag=tag, load_module_strict=False, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {ckpt_dir / tag}")
    saved = _saved_module_keys(ckpt_dir / tag)
    if saved is not None:
        missing = sorted(n for n in trainable_names if n not in saved)
        if missing:
            raise RuntimeError(
                f"checkpoint {ckpt_dir / tag} does not hold trainable tensors {missing[:5]}: it was written for "
                "another method or model; resume with the config it was trained with"
            )
    rng_file = ckpt_dir / tag / f"rng_rank{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return TrainState(**client["train_state"])


def _saved_module_keys(tag_dir: Path) -> set[str] | None:
    files = sorted(tag_dir.glob("mp_rank_00_model_states.pt")) or sorted(tag_dir.glob("*model_states.pt"))
    if not files:
        return None
    sd = torch.load(files[0], map_location="cpu", weights_only=False)
    module = sd.get("module") or {}
    return set(module)
