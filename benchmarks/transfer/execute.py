"""One benchmark run: its config, then training through the project's `Trainer` (or, for `frozen`, evaluation of
the backbone as it is), in the calling process, which holds a one-rank gloo group.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from dataclasses import dataclass
from pathlib import Path

from unitrans_ds.config import Config, flatten, load_config, to_dict

from .records import RunRecord, backbone_fingerprint
from .suite import TASKS, VARIANTS

EXPERIMENT = "unitrans-transfer"


@dataclass(frozen=True)
class Budget:
    """What every trained run gets: optimizer steps, samples per step, warmup."""

    max_steps: int = 200
    batch: int = 16
    warmup_steps: int = 10

    def tag(self) -> str:
        """What decides a result besides the job itself: records of another budget are never reused."""
        return f"scenes max_steps={self.max_steps} batch={self.batch} warmup={self.warmup_steps}"


@dataclass(frozen=True)
class Job:
    """One run of the plan (picklable: the workers receive it)."""

    phase: str  # select | report
    task: str
    method: str  # a variant name
    seed: int
    rank: int
    lr: float | None  # None for frozen
    split: str  # val | test

    def key(self) -> tuple:
        return (self.phase, self.task, self.method, self.seed, self.rank, self.lr, self.split)


@dataclass(frozen=True)
class Inputs:
    """Where a job reads and writes (the same for every job of a benchmark)."""

    pretrained: str
    shards: str
    run_root: str
    tracking_uri: str | None
    ds_config: str
    budget: Budget


def run_config(job: Job, inputs: Inputs) -> Config:
    """The training config of one job: domain B train split, evaluation on `job.split` only, at the end.

    The seed sets everything random: `train.seed` (init of new parameters, dropout, data order) and
    `method.seed` (the shared random matrices A and B)."""
    bench, variant = TASKS[job.task], VARIANTS[job.method]
    root = Path(inputs.shards) / bench.shards
    budget = inputs.budget
    run_dir = Path(inputs.run_root) / job.phase / job.task / f"{variant.slug}-r{job.rank}-lr{job.lr}-s{job.seed}"
    overrides = [
        f"task={bench.task}",
        f"video={'true' if bench.video else 'false'}",
        f"model.init_from={backbone_folder(job.task, inputs.pretrained)}",
        "model.image_size=64",
        f"method.name={variant.method}",
        f"method.rank={job.rank}",
        f"method.seed={job.seed}",
        f"data.train_shards={root / 'train'}",
        "data.val_shards=null",
        f"data.test_shards={root / job.split}",
        f"data.dataset=scenes-b{'-video' if bench.video else ''}",
        # scenes texts name colours, say left/right and name positions and counts: no colour operations, no
        # flips, no random crops
        "data.randaugment=false",
        "data.hflip=false",
        "data.min_scale=1.0",
        "data.num_workers=0",
        f"optim.lr={job.lr if job.lr is not None else 1e-3}",
        f"optim.warmup_steps={budget.warmup_steps}",
        "train.epochs=10000",  # the step count decides alone
        f"train.max_steps={budget.max_steps}",
        f"train.global_batch_size={budget.batch}",
        f"train.micro_batch_size={budget.batch}",
        "train.precision=fp32",
        "train.cpu_threads=1",
        f"train.seed={job.seed}",
        "train.zero_shot_eval=false",
        "train.log_every=50",
        "train.grad_norms=true",  # each loss part's gradient norm at the log steps (issue 10: MCAM vs ITC vs ITM)
        f"train.output_dir={run_dir}",
        "eval.k_test=16",
        "eval.vqa_k_test=16",
        f"tracking.experiment={EXPERIMENT}",
        f"tracking.run_name={job.task}-{variant.slug}-r{job.rank}-lr{job.lr}-s{job.seed}-{job.split}",
        f"tracking.tracking_uri={inputs.tracking_uri if inputs.tracking_uri else 'null'}",
        *bench.overrides,
        *variant.overrides,
    ]
    return load_config(None, overrides)


def _split_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The evaluated split's metrics without their prefix (the trainer logs the final split as `test/...`)."""
    return {k.split("/", 1)[1]: float(v) for k, v in metrics.items() if k.startswith("test/")}


def _clock() -> tuple[float, float]:
    """(wall, CPU) seconds now; a run's record holds both differences."""
    return time.perf_counter(), time.process_time()


def _record(
    job: Job, inputs: Inputs, metrics: dict, steps: int, trainable: int, total: int, t0: tuple[float, float], run_id
):
    bench = TASKS[job.task]
    if bench.metric not in metrics:
        raise RuntimeError(f"{job}: the evaluation returned no `{bench.metric}` (got {sorted(metrics)})")
    return RunRecord(
        task=job.task, method=job.method, seed=job.seed, split=job.split, metric=bench.metric,
        value=metrics[bench.metric], trainable=trainable, total=total, lr=job.lr, rank=job.rank, steps=steps,
        phase=job.phase, budget=inputs.budget.tag(), seconds=round(time.perf_counter() - t0[0], 1),
        mlflow_run_id=run_id, metrics={k: round(v, 4) for k, v in metrics.items()},
        cpu_seconds=round(time.process_time() - t0[1], 1),
    )  # fmt: skip


def run_frozen(job: Job, inputs: Inputs, cfg: Config) -> RunRecord:
    """Evaluate the pretrained backbone on the split without training, logged as its own MLflow run."""
    from unitrans_ds.adapters import parameter_report, prepare_model
    from unitrans_ds.engine.distributed import init_distributed, pin_cpu_threads
    from unitrans_ds.evaluation.runner import evaluate
    from unitrans_ds.models.build import load_backbone
    from unitrans_ds.tasks import build_task
    from unitrans_ds.tracking import build_tracker
    from unitrans_ds.tracking.run_info import split_metrics

    t0 = _clock()
    rank, world, _ = init_distributed()
    pin_cpu_threads(cfg.train.cpu_threads)
    run_dir = Path(cfg.train.output_dir)
    backbone = load_backbone(cfg.model, cfg.task, seed=cfg.train.seed)
    prepare_model(backbone.model, cfg.method)
    report = parameter_report(backbone.model, "frozen")
    task = build_task(cfg, backbone.model, backbone.tokenizer, rank, world)
    tracker = build_tracker(cfg.tracking, rank, run_dir)
    tags = {"task": cfg.task + ("-video" if cfg.video else ""), "method": "frozen", "dataset": cfg.data.dataset}
    run_id = tracker.start(cfg.tracking.run_name, tags, {**flatten(to_dict(cfg)), **report.as_dict()})
    try:
        metrics = evaluate(task, cfg, cfg.data.test_shards, rank, world, out_dir=run_dir / "eval" / job.split)
        logged = split_metrics("test", metrics)
        tracker.log_metrics(logged, 0)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")
    return _record(job, inputs, _split_metrics(logged), 0, report.trainable, report.total, t0, run_id)


def run_trained(job: Job, inputs: Inputs, cfg: Config) -> RunRecord:
    """Train one variant with the project's Trainer (in this process) and read the final split's metrics."""
    from unitrans_ds.engine.trainer import Trainer

    t0 = _clock()
    trainer = Trainer(cfg, inputs.ds_config)
    result = trainer.run()
    if result.state.step < trainer.total_steps:  # stopped by a signal: not a result
        raise KeyboardInterrupt(f"{job.task}/{job.method} stopped at step {result.state.step}")
    record = _record(
        job, inputs, _split_metrics(result.metrics), result.state.step, trainer.report.trainable,
        trainer.report.total, t0, result.mlflow_run_id,
    )  # fmt: skip
    del trainer, result
    gc.collect()
    return record


def backbone_folder(task: str, pretrained: str | Path) -> Path:
    """The save_pretrained folder a benchmark task starts from."""
    return Path(pretrained) / f"tiny-blip-{TASKS[task].backbone}"


def run_job(job: Job, inputs: Inputs) -> RunRecord:
    cfg = run_config(job, inputs)
    fingerprint = backbone_fingerprint(backbone_folder(job.task, inputs.pretrained))  # what this run loads
    if VARIANTS[job.method].method == "frozen":
        record = run_frozen(job, inputs, cfg)
    else:
        record = run_trained(job, inputs, cfg)
    return dataclasses.replace(record, backbone=fingerprint)
