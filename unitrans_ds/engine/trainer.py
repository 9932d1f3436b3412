"""The one training loop: every task, every method, every ZeRO stage.

Read `train()` top to bottom: build (model, adapters, task, data, DeepSpeed engine, tracker), maybe resume,
then for each micro batch: forward through the engine (named losses), backward, step; log, evaluate, export,
checkpoint at their intervals; finally evaluate the best adapter on the test split. Rank 0 writes files and
MLflow; collectives (loss averaging, save_checkpoint, ZeRO-3 gathers, evaluation) run on every rank.
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..adapters import prepare_model, save_adapter, trainable_state_dict, zero3_register_external
from ..config import Config, ConfigError, save_config
from ..data.loaders import check_shards, train_loader_from_config
from ..data.manifest import read_manifest
from ..data.skips import DataLossError, SkipTotals, describe_loss, loss_summary, merge_ledgers
from ..models.build import load_backbone
from ..tasks import build_task
from ..tracking import build_tracker
from ..tracking.journal import METRICS_FILE
from ..tracking.progress import progress, write
from ..tracking.run_info import metric_key, run_params, shard_datasets, split_metrics, standard_tags
from ..tracking.summary import summary_table
from .checkpoint import TrainState, latest_tag, load_checkpoint, logged_after, save_checkpoint
from .distributed import (
    barrier,
    gather_objects,
    init_distributed,
    mean_over_ranks,
    pin_cpu_threads,
    sum_over_ranks,
)
from .ds_config import bf16_supported, resolve_ds_config
from .eval_model import EvalModel
from .optim import build_optimizer, build_scheduler, clamp_temperature, temperature_param
from .stop import EXIT_STOPPED, StopRequest

log = logging.getLogger("unitrans_ds.train")

#: the metric each task's `best_metric` default refers to, when the config leaves the retrieval default
_DEFAULT_BEST = {"retrieval": "r_mean", "captioning": "cider", "vqa": "overall"}


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, float]
    state: TrainState
    mlflow_run_id: str | None
    status: str = "FINISHED"  # KILLED when stopped by SIGTERM (a checkpoint was written)


def _peak_memory_mib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _gathered(engine, stage: int):
    """Context that makes full trainable tensors visible under ZeRO-3 (no-op otherwise). Every rank enters."""
    if stage != 3:
        return contextlib.nullcontext()
    import deepspeed

    params = [p for p in engine.module.parameters() if p.requires_grad]
    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


class Trainer:
    def __init__(self, cfg: Config, ds_config: str | Path, resume: str | None = None):
        self.cfg = cfg
        self.rank, self.world, _ = init_distributed()
        pin_cpu_threads(cfg.train.cpu_threads)  # before any math: the thread count changes float results
        self.run_dir = Path(cfg.train.output_dir)
        self.resume = resume if resume is not None else cfg.train.resume
        torch.manual_seed(cfg.train.seed)

        if cfg.train.precision == "fp16" and not torch.cuda.is_available():
            raise ConfigError(
                "train.precision is fp16 but there is no CUDA device (DeepSpeed's fp16 loss scaling needs one): "
                "set train.precision to auto or fp32"
            )
        self.ds_cfg = resolve_ds_config(ds_config, cfg, self.world, bf16_supported())
        self.stage = int(self.ds_cfg.get("zero_optimization", {}).get("stage", 0))
        self.train_loader = train_loader_from_config(cfg, rank=self.rank, world_size=self.world)
        for split in ("val", "test"):  # fail now, not after hours of training
            folder = getattr(cfg.data, f"{split}_shards")
            if folder:
                check_shards(read_manifest(folder), self.world, cfg.data.num_workers, "evaluation")
        self.accum = int(self.ds_cfg["gradient_accumulation_steps"])
        steps_per_epoch = self.train_loader.steps_per_epoch // self.accum
        self.total_steps = cfg.train.epochs * steps_per_epoch
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)

        backbone = load_backbone(cfg.model, cfg.task, seed=cfg.train.seed)
        patch = backbone.model.config.vision_config.patch_size
        if cfg.model.image_size % patch:  # the ViT would silently drop the pixels past the last whole patch
            raise ConfigError(
                f"model.image_size ({cfg.model.image_size}) is not a multiple of the patch size ({patch}) of "
                f"{backbone.source}; use e.g. {cfg.model.image_size // patch * patch or patch}"
            )
        # as the user gave it (hub name or the folder as the config names it): the adapter's base_model_name_or_path
        self.base_name, self.tokenizer = cfg.model.init_from, backbone.tokenizer
        self.report = prepare_model(backbone.model, cfg.method)
        self.task = build_task(cfg, backbone.model, self.tokenizer, self.rank, self.world)
        optimizer = build_optimizer(self.task, cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.optim, self.total_steps)

        import deepspeed

        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=self.task, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_cfg
        )
        if self.stage == 3:
            zero3_register_external(self.task.model)
        self.temperature = temperature_param(self.engine.module)  # clamped after every optimizer step
        self.tracker = build_tracker(cfg.tracking, self.rank, self.run_dir)
        self.state = TrainState()
        self.eval_model = EvalModel(cfg, self.engine, self.stage, self.rank, self.world)
        self.skips = SkipTotals()
        self._logged_before: dict[int, set[str]] = {}  # step -> names logged by the run this one resumes

    # ------------------------------------------------------------------ set-up helpers
    @property
    def model(self):
        return self.task.model

    def _run_params(self) -> dict:
        return run_params(self.cfg, self.ds_cfg, self.report.as_dict(), self.world)

    def _start_tracking(self) -> None:
        cfg = self.cfg
        name = (
            cfg.tracking.run_name or f"{cfg.task}{'-video' if cfg.video else ''}-{cfg.method.name}-{cfg.data.dataset}"
        )
        tags = {
            "task": cfg.task + ("-video" if cfg.video else ""),
            "method": cfg.method.name,
            "dataset": cfg.data.dataset,
            "kind": "train",
            **standard_tags("launchers/train.py"),
        }
        run_id = self.tracker.start(name, tags, self._run_params(), resume_run_id=self.state.mlflow_run_id)
        if self.rank == 0:
            self.tracker.log_inputs(shard_datasets(cfg))
            self.state.mlflow_run_id = run_id or self.state.mlflow_run_id
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
            (self.run_dir / "ds_config.json").write_text(json.dumps(self.ds_cfg, indent=2))
            self.tracker.log_artifact(self.run_dir / "config.yaml")
            self.tracker.log_artifact(self.run_dir / "ds_config.json")
            print(
                f"[unitrans_ds] {cfg.task} / {cfg.method.name}: trainable parameters\n{self.report.table()}", flush=True
            )

    def _maybe_resume(self) -> None:
        if not self.resume:
            return
        ckpt_dir = (self.run_dir if self.resume == "auto" else Path(self.resume)) / "checkpoints"
        if self.resume == "auto" and latest_tag(ckpt_dir) is None:
            if self.rank == 0:
                log.info("resume=auto: no checkpoint in %s yet, starting fresh", ckpt_dir)
            return
        names = set(trainable_state_dict(self.engine.module))
        self.state = load_checkpoint(self.engine, ckpt_dir, self.rank, names)
        if self.rank == 0:
            self._logged_before = logged_after(self.run_dir / METRICS_FILE, self.state.step)
            print(f"[unitrans_ds] resumed from {ckpt_dir} at step {self.state.step}", flush=True)

    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log through the tracker, dropping what a run stopped after its last checkpoint already logged.

        A resumed run repeats the steps between that checkpoint and the stop, with identical values; the run
        folder's metrics file says which (step, name) pairs are in already, so each step is logged once.
        """
        done = self._logged_before.get(step)
        if done:
            metrics = {k: v for k, v in metrics.items() if k not in done}
        if metrics:
            self.tracker.log_metrics(metrics, step)

    # ------------------------------------------------------------------ evaluation and export
    def export_adapter(self, name: str) -> Path | None:
        """Collective (ZeRO-3 gathers); rank 0 writes `<run>/<name>/`."""
        out = self.run_dir / name
        with _gathered(self.engine, self.stage):
            if self.rank == 0:
                tensors = {k.removeprefix("model."): v for k, v in trainable_state_dict(self.engine.module).items()}
                save_adapter(
                    self.model,
                    out,
                    self.cfg.method,
                    self.base_name,
                    state_dict=tensors,
                    extra={"step": self.state.step, "task": self.cfg.task, "video": self.cfg.video},
                )
        barrier()
        return out if self.rank == 0 else None

    def evaluate(self, split: str, task=None) -> dict[str, float]:
        """Collective. Metrics of the task's evaluator on `data.<split>_shards`, prefixed with the split."""
        from ..evaluation.runner import evaluate

        shards = getattr(self.cfg.data, f"{split}_shards")
        if not shards:
            return {}
        out_dir = self.run_dir / "eval" / f"{split}_step{self.state.step:06d}"
        task = task if task is not None else self.eval_task()
        metrics = evaluate(task, self.cfg, shards, rank=self.rank, world_size=self.world, out_dir=out_dir)
        if self.rank == 0 and out_dir.is_dir():
            self.tracker.log_artifact(out_dir, artifact_path=f"eval/{out_dir.name}")
        return split_metrics(split, metrics)

    def eval_task(self, tensors: dict | None = None):
        """The task to evaluate, in `eval.precision` whatever the ZeRO stage (`engine.eval_model`): the live one,
        or a copy refreshed with the trained tensors. `tensors` (adapter names) overrides them."""
        return self.eval_model.task(tensors)

    def _best_key(self) -> str:
        metric = self.cfg.train.best_metric
        if metric == "r_mean" and self.cfg.task != "retrieval":
            metric = _DEFAULT_BEST[self.cfg.task]
        return f"val/{metric_key(metric)}"

    def _validate_and_export(self) -> dict[str, float]:
        metrics = self.evaluate("val")
        self.export_adapter("adapter_last")
        key = self._best_key()
        if key in metrics and (self.state.best_metric is None or metrics[key] > self.state.best_metric):
            self.state.best_metric, self.state.best_step = metrics[key], self.state.step
            self.export_adapter("adapter_best")
        elif metrics and key not in metrics and self.rank == 0:
            log.warning("best_metric %s is not among the validation metrics %s", key, sorted(metrics))
        return metrics

    # ------------------------------------------------------------------ the loop
    def _log_train(self, sums: dict[str, float], n: int, t0: float, samples: int) -> None:
        means = mean_over_ranks({k: v / max(n, 1) for k, v in sums.items()}, self.task.device)
        skipped = sum_over_ranks(
            self.skips.totals(), self.task.device, ["shard_read", "bad_json", "incomplete_sample", "image_decode"]
        )
        loss = self._data_loss()
        elapsed = max(time.perf_counter() - t0, 1e-9)
        # `train/loss`: the task's own losses, the same sum for every method; `train/objective`: what is optimised
        metrics = {"train/loss": sum(means[k] for k in self.task.task_loss_parts), "train/objective": means["loss"]}
        metrics.update({f"train/{k}": v for k, v in means.items() if k != "loss"})
        metrics.update(
            {
                "train/lr": self.scheduler.get_last_lr()[0],
                "train/samples_per_s": samples * self.world / elapsed,
                "train/step_time_s": elapsed / max(n, 1),
                "train/peak_memory_mib": _peak_memory_mib(),
                "train/epoch": self.state.epoch,
                "train/lost_samples": float(loss["lost_samples"]),  # against the manifest (data/skips.py)
                "train/lost_pairs": float(loss["lost_pairs"]),
            }
        )
        metrics.update({f"train/skipped_{k}": float(v) for k, v in skipped.items()})  # events, per kind
        self._log_metrics(metrics, self.state.step)
        limit = self.cfg.data.max_skip_fraction
        if loss["lost_fraction"] > limit:  # every rank sees the same gathered numbers and stops alike
            raise DataLossError(
                f"data.max_skip_fraction={limit}: {describe_loss(loss)}; rewrite those shards "
                "(python -m unitrans_ds.make_shards) or raise data.max_skip_fraction"
            )
        if self.rank == 0:
            write(
                f"step {self.state.step}/{self.total_steps} loss {metrics.get('train/loss', float('nan')):.4f} "
                f"lr {metrics['train/lr']:.2e} {metrics['train/samples_per_s']:.1f} samples/s"
            )

    def _data_loss(self) -> dict:
        """Collective: what the training data lost so far, over every rank, in samples and pairs per shard."""
        unit = "questions" if self.cfg.task == "vqa" else "captions"
        ledger = merge_ledgers(gather_objects(self.skips.ledger))
        manifest = self.train_loader.manifest
        return loss_summary(ledger, manifest.total_samples, manifest.num_items(unit), unit)

    def _train_loop(self, stop: StopRequest) -> str:
        # `with`: an error closes the bar first, so its one line is not glued to the end of the bar
        bar = progress(
            total=self.total_steps, initial=self.state.step, desc="train", unit="step", enabled=self.rank == 0
        )
        with contextlib.closing(bar):
            return self._train_steps(stop, bar)

    def _train_steps(self, stop: StopRequest, bar) -> str:
        cfg = self.cfg.train
        sums: dict[str, float] = {}
        n, samples, t0 = 0, 0, time.perf_counter()
        self.engine.train()
        while self.state.step < self.total_steps:
            self.train_loader.set_epoch(self.state.epoch, start_step=self.state.step_in_epoch)
            for batch in self.train_loader:
                self.skips.update(batch)
                losses = self.engine(batch, step=self.state.micro_step)
                if not torch.isfinite(losses["loss"]):
                    raise FloatingPointError(
                        f"non-finite loss {losses['loss'].item()} at step {self.state.step}; lower optim.lr or check the data"
                    )
                self.engine.backward(losses["loss"])
                self.engine.step()
                if self.temperature is not None:  # BLIP's range, after the step (a no-op between boundaries)
                    clamp_temperature(self.temperature, self.engine.optimizer)
                b = self.task.samples_in(batch)
                self.state.micro_step += 1
                self.state.step_in_epoch += 1
                self.state.samples_seen += b * self.world
                samples += b
                n += 1
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                if self.state.micro_step % self.accum:  # DeepSpeed steps the optimizer every `accum` micro steps
                    continue
                self.state.step += 1
                bar.update(1)
                step = self.state.step
                if step % cfg.log_every == 0 or step == self.total_steps:
                    self._log_train(sums, n, t0, samples)
                    sums, n, samples, t0 = {}, 0, 0, time.perf_counter()
                if cfg.eval_every and step % cfg.eval_every == 0 and step < self.total_steps:
                    self._log_metrics(self._validate_and_export(), step)
                    self.engine.train()
                stopping = stop.agreed(self.task.device)  # collective: all ranks stop on this same step or none
                if (cfg.save_every and step % cfg.save_every == 0) or stopping:
                    save_checkpoint(self.engine, self.run_dir / "checkpoints", self.state, self.rank, cfg.keep_last)
                if stopping:
                    return "KILLED"
                if step >= self.total_steps:
                    break
            else:
                self.skips.end_epoch()
                self.state.epoch += 1
                self.state.step_in_epoch = 0
        return "FINISHED"

    def run(self) -> RunResult:
        self._maybe_resume()
        self._start_tracking()
        status = "FAILED"
        metrics: dict[str, float] = {}
        try:
            with StopRequest() as stop:
                if self.state.step == 0 and self.cfg.train.zero_shot_eval and self.cfg.data.val_shards:
                    before = self.evaluate("val")
                    self._log_metrics(before, 0)
                    metrics.update(
                        {k.replace("val/", "val_before/"): v for k, v in before.items() if k.startswith("val/")}
                    )
                    self.engine.train()
                status = self._train_loop(stop)
            if status == "FINISHED":
                metrics.update(self._finish())
            self._log_metrics({k: v for k, v in metrics.items() if k.startswith("val_before/")}, 0)
        except BaseException:
            self.tracker.finish("FAILED")
            raise
        self.tracker.finish(status)
        return RunResult(self.run_dir, metrics, self.state, self.state.mlflow_run_id, status)

    def _finish(self) -> dict[str, float]:
        """Final validation (best adapter), adapter export, test evaluation with the best adapter, checkpoint."""
        final = self._validate_and_export() if self.cfg.data.val_shards else {}
        self._log_metrics(final, self.state.step)
        out = self.export_adapter("adapter_final")
        if self.rank == 0:
            self.tracker.log_artifact(out, artifact_path="adapter_final")
            if (self.run_dir / "adapter_best").is_dir():
                self.tracker.log_artifact(self.run_dir / "adapter_best", artifact_path="adapter_best")
        test = self._test_with_best()
        self._log_metrics(test, self.state.step)
        save_checkpoint(self.engine, self.run_dir / "checkpoints", self.state, self.rank, self.cfg.train.keep_last)
        loss = self._data_loss()
        metrics = {
            **final,
            **test,
            "train/steps": float(self.state.step),
            "train/samples_seen": float(self.state.samples_seen),
            "data/lost_samples": float(loss["lost_samples"]),
            "data/lost_pairs": float(loss["lost_pairs"]),
            "data/lost_fraction": loss["lost_fraction"],
        }
        if self.rank == 0:
            (self.run_dir / "final_metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
            (self.run_dir / "data_loss.json").write_text(json.dumps(loss, indent=2))
            self.tracker.log_dict(loss, "data_loss.json")
            print(f"[unitrans_ds] data: {describe_loss(loss)}", flush=True)
        return metrics

    def _test_with_best(self) -> dict[str, float]:
        """Test metrics of the best adapter (by `train.best_metric`), or of the final one when it is the best."""
        if not self.cfg.data.test_shards:
            return {}
        best = self.run_dir / "adapter_best" / "adapter_model.safetensors"
        if self.state.best_step in (None, self.state.step) or not best.is_file():
            return self.evaluate("test")
        from safetensors.torch import load_file

        if self.eval_model.uses_copy:  # the evaluation copy takes the best tensors; the engine is not touched
            return self.evaluate("test", task=self.eval_task(load_file(str(best))))
        current = {k: v.clone() for k, v in trainable_state_dict(self.task).items()}
        try:
            return self.evaluate("test", task=self.eval_task(load_file(str(best))))
        finally:
            params = dict(self.task.named_parameters())
            with torch.no_grad():
                for k, v in current.items():
                    params[k].copy_(v)


def train(cfg: Config, ds_config: str | Path, resume: str | None = None) -> RunResult:
    """Build everything and run. Returns the run folder, the final metrics and the train state."""
    trainer = Trainer(cfg, ds_config, resume)
    result = trainer.run()
    if trainer.rank == 0 and result.status == "KILLED":
        print(
            f"[unitrans_ds] stopped at step {result.state.step}/{trainer.total_steps} by request; checkpoint written "
            f"to {result.run_dir / 'checkpoints'}. To continue, rerun the same command with --resume "
            f"(or train.resume=auto). Exit status {EXIT_STOPPED}.",
            flush=True,
        )
    elif trainer.rank == 0:
        print(summary_table(result.metrics, result.run_dir, result.mlflow_run_id), flush=True)
    return result
