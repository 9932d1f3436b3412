"""The run's resume checkpoints: when one is due, writing it, and resuming from the latest.

Who calls it: the trainer, once before the loop (`resume`), after every optimizer step (`due`, `save`) and at
the end. Every rank calls `resume` and `save` (DeepSpeed's checkpoint calls are collectives; each rank writes its
own part, rank 0 the train state). The tensors and formats are `engine/checkpoint.py`'s.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..adapters import trainable_state_dict
from ..tracking.journal import METRICS_FILE
from .checkpoint import TrainState, latest_tag, load_checkpoint, logged_after, save_checkpoint

log = logging.getLogger("unitrans_ds.train")


class Checkpoints:
    """`<run>/checkpoints/`, written every `every` steps (0: only at the end and on a stop request), keeping the
    last `keep_last`. `resume`: `auto` (the run folder's latest, if any), a run folder, or None."""

    def __init__(self, run_dir: Path, resume: str | None, every: int, keep_last: int, rank: int):
        self.run_dir, self.resume_from, self.every, self.keep_last, self.rank = run_dir, resume, every, keep_last, rank
        self.dir = run_dir / "checkpoints"

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def save(self, engine, state: TrainState) -> None:
        """Collective."""
        save_checkpoint(engine, self.dir, state, self.rank, self.keep_last)

    def resume(self, engine) -> tuple[TrainState, dict[int, set[str]]] | None:
        """Collective. The train state restored into `engine`, and {step: metric names} the resumed run logged
        after its checkpoint (so that each step is logged once); None when there is nothing to resume."""
        if not self.resume_from:
            return None
        ckpt_dir = (self.run_dir if self.resume_from == "auto" else Path(self.resume_from)) / "checkpoints"
        if self.resume_from == "auto" and latest_tag(ckpt_dir) is None:
            if self.rank == 0:
                log.info("resume=auto: no checkpoint in %s yet, starting fresh", ckpt_dir)
            return None
        state = load_checkpoint(engine, ckpt_dir, self.rank, set(trainable_state_dict(engine.module)))
        logged: dict[int, set[str]] = {}
        if self.rank == 0:
            logged = logged_after(self.run_dir / METRICS_FILE, state.step)
            print(f"[unitrans_ds] resumed from {ckpt_dir} at step {state.step}", flush=True)
        return state, logged
