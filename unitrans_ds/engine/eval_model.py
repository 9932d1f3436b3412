"""The model an evaluation runs on during training: one precision (`eval.precision`) for every ZeRO stage.

Who calls it: the trainer's validation unit (`engine/validation.py`), at each validation and for the final test.
Every rank calls it.

- `fp32` (default, as BLIP evaluates): the weights are full precision. When the engine trains in fp32 at ZeRO
  0-2, that is the live model; otherwise a copy built once from the same base in fp32.
- `train`: the training precision. At ZeRO 0-2 the live model; at ZeRO-3 a copy in the training dtype.

ZeRO-3 always evaluates a copy: it gathers parameters in collectives at every module call, which evaluation
cannot honour (ranks score different numbers of candidates). A copy takes the trained tensors from DeepSpeed's
fp32 master weights where it keeps them (bf16/fp16 training, any ZeRO stage), else from the parameters, cast to
its dtype: the same tensors whatever the stage, so the same adapter scores the same at ZeRO-2 and ZeRO-3.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..adapters import prepare_model
from ..config.schema import Config
from ..models.build import load_backbone
from ..tasks import Task, build_task


def full_fp32_tensor(param: nn.Parameter) -> torch.Tensor | None:
    """DeepSpeed's fp32 master value of `param` (a collective: every rank calls it), or None without one."""
    if not (hasattr(param, "ds_id") or hasattr(param, "_hp_mapping")):
        return None
    from deepspeed.utils import safe_get_full_fp32_param

    return safe_get_full_fp32_param(param)


class EvalModel:
    """Chooses and refreshes the task an evaluation runs on (see the module docstring)."""

    def __init__(self, cfg: Config, engine, stage: int, rank: int = 0, world_size: int = 1):
        self.cfg, self.engine, self.stage = cfg, engine, stage
        self.rank, self.world_size = rank, world_size
        self.live: Task = engine.module
        self.dtype = torch.float32 if cfg.eval.precision == "fp32" else self.live.dtype
        self._copy: Task | None = None

    @property
    def uses_copy(self) -> bool:
        """True when the evaluation runs on a separate copy (ZeRO-3, or a precision the engine does not train in)."""
        return self.stage == 3 or self.dtype != self.live.dtype

    def task(self, tensors: dict[str, torch.Tensor] | None = None) -> Task:
        """The task to evaluate, its trainable tensors current; `tensors` (adapter names, `model.` stripped)
        override them. Without a copy, `tensors` are written into the live model: the caller restores it."""
        target = self._refreshed_copy() if self.uses_copy else self.live
        if tensors is not None:
            params = dict(target.named_parameters())
            with torch.no_grad():
                for k, v in tensors.items():
                    params["model." + k].copy_(v.to(params["model." + k].dtype))
        return target

    @contextlib.contextmanager
    def evaluating(self, tensors: dict[str, torch.Tensor] | None = None) -> Iterator[Task]:
        """`task(tensors)` for the body; when `tensors` went into the live model, its own tensors are put back on
        exit (the engine's training state is not touched)."""
        if tensors is None or self.uses_copy:
            yield self.task(tensors)
            return
        params = dict(self.live.named_parameters())
        current = {n: p.detach().clone() for n, p in params.items() if p.requires_grad}
        try:
            yield self.task(tensors)
        finally:
            with torch.no_grad():
                for n, v in current.items():
                    params[n].copy_(v)

    def _refreshed_copy(self) -> Task:
        if self._copy is None:
            bb = load_backbone(self.cfg.model, self.cfg.task, seed=self.cfg.train.seed)
            prepare_model(bb.model, self.cfg.method)
            task = build_task(self.cfg, bb.model, bb.tokenizer, self.rank, self.world_size)
            self._copy = task.to(device=self.live.device, dtype=self.dtype)
        copy = dict(self._copy.named_parameters())
        trainable = [(n, p) for n, p in self.live.named_parameters() if p.requires_grad]
        masters = [full_fp32_tensor(p) for _, p in trainable]  # collectives, in the same order on every rank
        if any(m is None for m in masters) and self.stage == 3:
            raise RuntimeError("ZeRO-3 parameters without fp32 master weights: the engine has no ZeRO-3 optimizer")
        with torch.no_grad():
            for (name, p), master in zip(trainable, masters):
                copy[name].copy_((master if master is not None else p.detach()).to(copy[name].dtype))
        return self._copy
