"""The one training loop: every task, every method, every ZeRO stage.

Read `train()` top to bottom: build (model, adapters, task, data, DeepSpeed engine, tracker), maybe resume,
then for each micro batch: forward through the engine (named losses), backward, step; log, validate (with the
adapter exports), checkpoint at their intervals; finally evaluate the best adapter on the test split. Three
units do the rest: `validation.py` (validation rounds, exports, best adapter), `run_checkpoints.py` (resume
checkpoints) and `eval_model.py` (the model evaluations run on, a copy under ZeRO-3). Rank 0 writes files; the
tracker is a no-op on the other ranks; collectives (loss averaging, save_checkpoint, ZeRO-3 gathers, evaluation)
run on every rank. docs/architecture.md follows one step through the code.
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

from ..adapters import prepare_model, zero3_register_external
from ..collectives import all_gather_objects, mean_over_ranks, sum_over_ranks
from ..config import Config, ConfigError, save_config
from ..data.loaders import check_shards, train_loader_from_config
from ..data.manifest import Manifest, read_splits
from ..data.skips import DataLossError, SkipTotals, describe_loss, loss_summary, merge_ledgers
from ..models.build import load_backbone
from ..tasks import Dist, build_task
from ..tracking import build_tracker
from ..tracking.progress import progress, write
from ..tracking.run_info import run_params, shard_datasets, standard_tags
from ..tracking.summary import summary_table
from .checkpoint import TrainState
from .distributed import init_distributed, pin_cpu_threads
from .ds_config import bf16_supported, resolve_ds_config
from .eval_model import EvalModel
from .grad_norms import loss_grad_norms
from .optim import build_optimizer, build_scheduler, clamp_temperature, temperature_param
from .run_checkpoints import Checkpoints
from .stop import EXIT_STOPPED, StopRequest
from .validation import Validation

log = logging.getLogger("unitrans_ds.train")


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


class Trainer:
    """`manifests`: the splits' manifests when the caller has read them (`data.manifest.read_splits`), so that a
    run reads each once; the others are read here."""

    def __init__(
        self,
        cfg: Config,
        ds_config: str | Path,
        resume: str | None = None,
        manifests: dict[str, Manifest] | None = None,
    ):
        self.cfg = cfg
        self.rank, self.world, _ = init_distributed()
        pin_cpu_threads(cfg.train.cpu_threads)  # before any math: the thread count changes float results
        self.run_dir = Path(cfg.train.output_dir)
        torch.manual_seed(cfg.train.seed)

        if cfg.train.precision == "fp16" and not torch.cuda.is_available():
            raise ConfigError(
                "train.precision is fp16 but there is no CUDA device (DeepSpeed's fp16 loss scaling needs one): "
                "set train.precision to auto or fp32"
            )
        self.ds_cfg = resolve_ds_config(ds_config, cfg, self.world, bf16_supported())
        self.stage = int(self.ds_cfg.get("zero_optimization", {}).get("stage", 0))
        self.manifests = read_splits(cfg.data, manifests)
        self.train_loader = train_loader_from_config(
            cfg, rank=self.rank, world_size=self.world, manifest=self.manifests["train"]
        )
        for split in ("val", "test"):  # fail now, not after hours of training
            if split in self.manifests:
                check_shards(self.manifests[split], self.world, cfg.data.num_workers, "evaluation")
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
        if cfg.train.grad_norms and self.stage == 3:
            raise ConfigError(
                "train.grad_norms needs ZeRO stage 0, 1 or 2 (stage 3 partitions the parameters, so no rank holds "
                "a full gradient): set it to false or use ds_configs/zero2.json"
            )
        self.trainable = [p for p in self.engine.module.parameters() if p.requires_grad]
        self.temperature = temperature_param(self.engine.module)  # clamped after every optimizer step
        self.tracker = build_tracker(cfg.tracking, self.rank, self.run_dir)
        self.state = TrainState()
        self.eval_model = EvalModel(cfg, self.engine, self.stage, self.rank, self.world)
        self.validation = Validation(
            cfg, self.engine, self.stage, self.eval_model, self.tracker, self.run_dir, Dist(self.rank, self.world),
            self.base_name, self.manifests,
        )  # fmt: skip
        t = cfg.train
        self.checkpoints = Checkpoints(
            self.run_dir, resume if resume is not None else t.resume, t.save_every, t.keep_last, self.rank
        )
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
        self.state.mlflow_run_id = run_id or self.state.mlflow_run_id
        self.tracker.log_inputs(shard_datasets(cfg, self.manifests))
        if self.rank == 0:  # files: rank 0 writes
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
            (self.run_dir / "ds_config.json").write_text(json.dumps(self.ds_cfg, indent=2))
            print(
                f"[unitrans_ds] {cfg.task} / {cfg.method.name}: trainable parameters\n{self.report.table()}", flush=True
            )
        self.tracker.log_artifact(self.run_dir / "config.yaml")
        self.tracker.log_artifact(self.run_dir / "ds_config.json")

    def _maybe_resume(self) -> None:
        resumed = self.checkpoints.resume(self.engine)
        if resumed is not None:
            self.state, self._logged_before = resumed

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

    # ------------------------------------------------------------------ the loop
    def _grad_norms_due(self) -> bool:
        """The coming micro step ends an optimizer step that will be logged (`train.grad_norms`)."""
        nxt = self.state.step + 1
        boundary = (self.state.micro_step + 1) % self.accum == 0
        return (
            self.cfg.train.grad_norms and boundary and (nxt % self.cfg.train.log_every == 0 or nxt == self.total_steps)
        )

    def _log_train(
        self, sums: dict[str, float], n: int, t0: float, samples: int, grad_norms: dict[str, float] | None = None
    ) -> None:
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
        # the last micro batch's, already averaged over ranks (engine/grad_norms.py)
        metrics.update({f"train/grad_norm_{k.removeprefix('loss_')}": v for k, v in (grad_norms or {}).items()})
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
        unit = self.task.item_unit
        ledger = merge_ledgers(all_gather_objects(self.skips.ledger))
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
        grad_norms: dict[str, float] = {}
        n, samples, t0 = 0, 0, time.perf_counter()
        self.engine.train()
        while self.state.step < self.total_steps:
            self.train_loader.set_epoch(self.state.epoch, start_step=self.state.step_in_epoch)
            for batch in self.train_loader:
                self.skips.update(batch)
                norms_due = self._grad_norms_due()
                losses = self.engine(batch, step=self.state.micro_step, keep_parts=norms_due)
                if not torch.isfinite(losses["loss"]):
                    raise FloatingPointError(
                        f"non-finite loss {losses['loss'].item()} at step {self.state.step}; lower optim.lr or check the data"
                    )
                if norms_due:  # before the backward that frees the graph
                    grad_norms = loss_grad_norms(self.task.kept_losses, self.trainable)
                    self.task.kept_losses = {}
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
                    self._log_train(sums, n, t0, samples, grad_norms)
                    sums, grad_norms, n, samples, t0 = {}, {}, 0, 0, time.perf_counter()
                if cfg.eval_every and step % cfg.eval_every == 0 and step < self.total_steps:
                    self._log_metrics(self.validation.validate(self.state), step)
                    self.engine.train()
                stopping = stop.agreed(self.task.device)  # collective: all ranks stop on this same step or none
                if self.checkpoints.due(step) or stopping:
                    self.checkpoints.save(self.engine, self.state)
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
                    before = self.validation.evaluate("val", self.state.step)
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
        final = self.validation.validate(self.state) if self.cfg.data.val_shards else {}
        self._log_metrics(final, self.state.step)
        out = self.validation.export("adapter_final", self.state.step)
        self.tracker.log_artifact(out, artifact_path="adapter_final")  # None on other ranks: a no-op tracker there
        if (self.run_dir / "adapter_best").is_dir():
            self.tracker.log_artifact(self.run_dir / "adapter_best", artifact_path="adapter_best")
        test = self.validation.test_best(self.state)
        self._log_metrics(test, self.state.step)
        self.checkpoints.save(self.engine, self.state)
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
        self.tracker.log_dict(loss, "data_loss.json")
        if self.rank == 0:
            (self.run_dir / "final_metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
            (self.run_dir / "data_loss.json").write_text(json.dumps(loss, indent=2))
            print(f"[unitrans_ds] data: {describe_loss(loss)}", flush=True)
        return metrics


def train(
    cfg: Config, ds_config: str | Path, resume: str | None = None, manifests: dict[str, Manifest] | None = None
) -> RunResult:
    """Build everything and run. Returns the run folder, the final metrics and the train state. `manifests`: the
    splits' manifests the caller read already (`launchers/train.py` checks them before anything is built)."""
    trainer = Trainer(cfg, ds_config, resume, manifests)
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
