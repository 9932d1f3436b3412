"""Validation rounds, the adapter exports they write, and the choice of the best adapter.

Who calls it: the trainer, at `train.eval_every`, at the end of training, and for the final test. Every rank
calls every method: evaluations and ZeRO-3 gathers are collectives; rank 0 writes the files, and the tracker
(a no-op one on the other ranks) logs.

- `validate`: metrics on `data.val_shards`, then `adapter_last/` and, when the metric improved, `adapter_best/`.
  The metric is `train.best_metric` or the task's `default_best_metric` (a name the task does not return is a
  config error, found before training).
- `test_best`: metrics on `data.test_shards` of the best adapter (the final one when it is the best).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from ..adapters import save_adapter, trainable_state_dict
from ..collectives import barrier
from ..config.schema import Config
from ..data.manifest import Manifest
from ..tasks import Dist
from ..tracking.base import Tracker
from ..tracking.run_info import metric_key, split_metrics
from .checkpoint import TrainState
from .eval_model import EvalModel

log = logging.getLogger("unitrans_ds.train")


def gathered(engine, stage: int):
    """Context that makes full trainable tensors visible under ZeRO-3 (no-op otherwise). Every rank enters."""
    if stage != 3:
        return contextlib.nullcontext()
    import deepspeed

    params = [p for p in engine.module.parameters() if p.requires_grad]
    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


class Validation:
    """See the module docstring. `base_name`: the backbone as the user named it (the adapter's base model);
    `manifests`: the run's split manifests, read once (`data.manifest.read_splits`)."""

    def __init__(
        self,
        cfg: Config,
        engine,
        stage: int,
        eval_model: EvalModel,
        tracker: Tracker,
        run_dir: Path,
        dist: Dist,
        base_name: str,
        manifests: dict[str, Manifest],
    ):
        self.cfg, self.engine, self.stage, self.manifests = cfg, engine, stage, manifests
        self.eval_model, self.tracker, self.run_dir, self.dist = eval_model, tracker, run_dir, dist
        self.base_name = base_name
        task = engine.module
        self.best_key = f"val/{metric_key(task.best_metric(cfg.train.best_metric))}"

    def evaluate(self, split: str, step: int, tensors: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        """Collective. Metrics on `data.<split>_shards` (empty when null), prefixed with the split; `tensors`
        (adapter names) evaluate another adapter than the trained one (`EvalModel.task`)."""
        from ..evaluation.runner import evaluate

        shards = self.manifests.get(split)
        if shards is None:
            return {}
        out_dir = self.run_dir / "eval" / f"{split}_step{step:06d}"
        with self.eval_model.evaluating(tensors) as task:
            metrics = evaluate(task, self.cfg, shards, self.dist.rank, self.dist.world_size, out_dir=out_dir)
        if out_dir.is_dir():
            self.tracker.log_artifact(out_dir, artifact_path=f"eval/{out_dir.name}")
        return split_metrics(split, metrics)

    def export(self, name: str, step: int) -> Path | None:
        """Collective (ZeRO-3 gathers); rank 0 writes `<run>/<name>/` and gets its path."""
        out = self.run_dir / name
        with gathered(self.engine, self.stage):
            if self.dist.rank == 0:
                tensors = {k.removeprefix("model."): v for k, v in trainable_state_dict(self.engine.module).items()}
                save_adapter(
                    self.engine.module.model,
                    out,
                    self.cfg.method,
                    self.base_name,
                    state_dict=tensors,
                    extra={"step": step, "task": self.cfg.task, "video": self.cfg.video},
                )
        barrier()
        return out if self.dist.rank == 0 else None

    def validate(self, state: TrainState) -> dict[str, float]:
        """Collective. Validation metrics; exports `adapter_last/`, and `adapter_best/` when the best metric
        improved (recorded in `state`)."""
        metrics = self.evaluate("val", state.step)
        self.export("adapter_last", state.step)
        key = self.best_key
        if key in metrics and (state.best_metric is None or metrics[key] > state.best_metric):
            state.best_metric, state.best_step = metrics[key], state.step
            self.export("adapter_best", state.step)
        elif metrics and key not in metrics and self.dist.rank == 0:
            log.warning("best_metric %s is not among the validation metrics %s", key, sorted(metrics))
        return metrics

    def test_best(self, state: TrainState) -> dict[str, float]:
        """Collective. Test metrics of the best adapter (by the best metric), or of the final one when it is the
        best (or there was no validation)."""
        if not self.cfg.data.test_shards:
            return {}
        best = self.run_dir / "adapter_best" / "adapter_model.safetensors"
        if state.best_step in (None, state.step) or not best.is_file():
            return self.evaluate("test", state.step)
        from safetensors.torch import load_file

        return self.evaluate("test", state.step, tensors=load_file(str(best)))
