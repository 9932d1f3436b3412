"""Transfer benchmark: every method of SPEC section 7 on every demo task, over seeds, on domain B of `shapes`.

    python -m unitrans_ds.demo.transfer [--methods ...] [--tasks ...] [--seeds 0 1 2] [--max_steps N | --epochs N]
                                        [--out benchmarks/results] [--sweep_ranks 2 4 8 16 32 | --no_sweep]

Every run starts from a backbone pretrained on domain A (`python -m unitrans_ds.demo.pretrain`): image tasks from
the task's own class, video retrieval from the retrieval model and video QA from the VQA model. Trained methods go
through the project's `Trainer` in this process (one rank, the same loop `launchers/train.py` runs); `frozen` is
the same backbone evaluated without training (`zero_shot`), once per task since it has no randomness. Each run
is an MLflow run in the experiment `unitrans-transfer` (tags task, method, dataset; params incl. `train.seed`).

Writes to `--out`: `transfer.md` and `transfer.csv` (per method: trainable parameters, metric mean ± std per
task, share of the frozen-to-full gap closed), `runs.jsonl` (one line per run; a rerun with the same settings
skips the runs it already holds at the same budget, so an interrupted benchmark resumes), `rank_sweep.png` / `rank_sweep.csv`
(metric and trainable parameters against rank for unitrans and lora on image retrieval). A summary MLflow run
holds the tables and the plot as artifacts.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..cli import ArgumentParser
from ..config import Config, flatten, load_config, to_dict
from ..config.schema import METHODS
from ..engine.distributed import shutdown_distributed

EXPERIMENT = "unitrans-transfer"


@dataclass(frozen=True)
class DemoTask:
    """One demo task: which model class and pretrained backbone, which shards, which headline metric."""

    name: str
    label: str
    task: str
    video: bool
    backbone: str  # the pretrained task class the run starts from (folder `tiny-blip-<backbone>`)
    shards: str  # folder under the shards root holding train/ val/ test/
    metric: str
    overrides: tuple[str, ...] = ()


DEMO_TASKS: dict[str, DemoTask] = {
    t.name: t
    for t in (
        DemoTask("image_retrieval", "image retrieval", "retrieval", False, "retrieval", "image_b", "r_mean"),
        DemoTask("captioning", "captioning", "captioning", False, "captioning", "image_b", "cider"),
        DemoTask("vqa", "VQA", "vqa", False, "vqa", "image_b", "overall"),
        DemoTask(
            "video_retrieval",
            "video retrieval",
            "retrieval",
            True,
            "retrieval",
            "video_b",
            "r_mean",
            ("data.num_frames=4", "data.max_words=40"),
        ),
        DemoTask("video_qa", "video QA", "vqa", True, "vqa", "video_b", "accuracy", ("data.num_frames=4",)),
    )
}

#: peak learning rate per method: full fine-tuning moves every weight and wants a smaller step than adapters
METHOD_LR = {"full": 1e-4, "lora": 1e-3}
#: VCRA-family methods train vectors that start at 0 (Λb) and 1 (Λa): they need a larger step than LoRA
ADAPTER_LR = 1e-2


@dataclass
class Budget:
    """How long each trained run goes: `max_steps` caps `epochs` (both as in `train.*`), batch per step."""

    epochs: int = 1
    max_steps: int | None = None
    batch: int = 16
    rank: int = 16
    lr: float | None = None  # None = METHOD_LR / ADAPTER_LR
    split: str = "test"

    def tag(self) -> str:
        """What decides a run's result besides task/method/seed/rank: records of another budget are not reused."""
        return f"epochs={self.epochs} max_steps={self.max_steps} batch={self.batch} lr={self.lr} split={self.split}"


@dataclass
class RunRecord:
    """One finished run: the headline metric and every metric of the evaluated split."""

    task: str
    method: str
    seed: int
    rank: int
    steps: int
    metric: str
    value: float
    trainable: int
    total: int
    seconds: float
    mlflow_run_id: str | None
    split: str
    metrics: dict[str, float] = field(default_factory=dict)
    budget: str = ""

    def key(self) -> tuple:
        return (self.task, self.method, self.seed, self.rank, self.steps, self.split)


def run_config(
    demo: DemoTask,
    method: str,
    seed: int,
    budget: Budget,
    pretrained: Path,
    shards_root: Path,
    run_dir: Path,
    tracking_uri: str | None,
) -> Config:
    """The training config of one benchmark run (evaluation on `budget.split` only, at the end)."""
    root = shards_root / demo.shards
    lr = budget.lr if budget.lr is not None else METHOD_LR.get(method, ADAPTER_LR)
    overrides = [
        f"task={demo.task}",
        f"video={'true' if demo.video else 'false'}",
        f"model.init_from={pretrained / f'tiny-blip-{demo.backbone}'}",
        "model.image_size=64",
        f"method.name={method}",
        f"method.rank={budget.rank}",
        f"data.train_shards={root / 'train'}",
        "data.val_shards=null",
        f"data.test_shards={root / budget.split}",
        "data.dataset=shapes-b",
        "data.randaugment=false",
        "data.hflip=false",
        "data.num_workers=0",
        f"optim.lr={lr}",
        "optim.warmup_steps=5",
        # with --max_steps the step count decides alone (train.* caps epochs by max_steps, not the reverse)
        f"train.epochs={budget.epochs if not budget.max_steps else 10_000}",
        f"train.max_steps={budget.max_steps if budget.max_steps else 'null'}",
        f"train.global_batch_size={budget.batch}",
        f"train.micro_batch_size={budget.batch}",
        "train.precision=fp32",
        f"train.seed={seed}",
        "train.zero_shot_eval=false",
        "train.log_every=1000000",  # keep the console to one line per run; the loss still ends in MLflow at the end
        f"train.output_dir={run_dir}",
        "eval.k_test=16",
        "eval.vqa_k_test=8",
        f"tracking.experiment={EXPERIMENT}",
        f"tracking.run_name={demo.name}-{method}-r{budget.rank}-s{seed}",
        f"tracking.tracking_uri={tracking_uri if tracking_uri else 'null'}",
        *demo.overrides,
    ]
    return load_config(None, overrides)


def _test_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The evaluated split's metrics without their prefix (the trainer logs the final split as `test/...`)."""
    return {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("test/")}


def run_frozen(cfg: Config, demo: DemoTask, seed: int, budget: Budget) -> RunRecord:
    """Evaluate the pretrained backbone on the split without training, logged as its own MLflow run."""
    from ..adapters import parameter_report, prepare_model
    from ..engine.distributed import init_distributed
    from ..evaluation.runner import evaluate
    from ..models.build import load_backbone
    from ..tasks import build_task
    from ..tracking import build_tracker
    from ..tracking.run_info import split_metrics

    t0 = time.perf_counter()
    rank, world, _ = init_distributed()
    run_dir = Path(cfg.train.output_dir)
    backbone = load_backbone(cfg.model, cfg.task, seed=cfg.train.seed)
    prepare_model(backbone.model, cfg.method)
    report = parameter_report(backbone.model, "frozen")
    task = build_task(cfg, backbone.model, backbone.tokenizer, rank, world)
    tracker = build_tracker(cfg.tracking, rank, run_dir)
    tags = {"task": demo.task + ("-video" if demo.video else ""), "method": "frozen", "dataset": cfg.data.dataset}
    params = {**flatten(to_dict(cfg)), **report.as_dict()}
    run_id = tracker.start(cfg.tracking.run_name, tags, params)
    try:
        metrics = evaluate(task, cfg, cfg.data.test_shards, rank, world, out_dir=run_dir / "eval" / budget.split)
        logged = split_metrics("test", metrics)
        tracker.log_metrics(logged, 0)
        metrics = _test_metrics(logged)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("FINISHED")
    return RunRecord(
        demo.name, "frozen", seed, budget.rank, 0, demo.metric, metrics[demo.metric], report.trainable,
        report.total, time.perf_counter() - t0, run_id, budget.split, metrics,
    )  # fmt: skip


def run_trained(cfg: Config, demo: DemoTask, method: str, seed: int, budget: Budget, ds_config: str) -> RunRecord:
    """Train one method with the project's Trainer (in this process) and read the final split's metrics."""
    from ..engine.trainer import Trainer

    t0 = time.perf_counter()
    trainer = Trainer(cfg, ds_config)
    result = trainer.run()
    metrics = _test_metrics(result.metrics)
    if demo.metric not in metrics:
        raise RuntimeError(
            f"{demo.name}/{method}: the evaluation returned no `{demo.metric}` (got {sorted(metrics)}); "
            f"see {cfg.train.output_dir}"
        )
    record = RunRecord(
        demo.name, method, seed, budget.rank, result.state.step, demo.metric, metrics[demo.metric],
        trainer.report.trainable, trainer.report.total, time.perf_counter() - t0, result.mlflow_run_id,
        budget.split, metrics,
    )  # fmt: skip
    del trainer, result
    gc.collect()
    return record


def run_one(
    demo: DemoTask,
    method: str,
    seed: int,
    budget: Budget,
    pretrained: Path,
    shards_root: Path,
    run_root: Path,
    tracking_uri: str | None,
    ds_config: str,
) -> RunRecord:
    """One benchmark run (trained, or evaluated as is for `frozen`)."""
    run_dir = run_root / demo.name / f"{method}-r{budget.rank}-s{seed}"
    cfg = run_config(demo, method, seed, budget, pretrained, shards_root, run_dir, tracking_uri)
    if method == "frozen":
        return run_frozen(cfg, demo, seed, budget)
    return run_trained(cfg, demo, method, seed, budget, ds_config)


# ---------------------------------------------------------------------- results files
def load_records(path: Path) -> list[RunRecord]:
    if not path.is_file():
        return []
    return [RunRecord(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def append_record(path: Path, record: RunRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record.__dict__) + "\n")


@dataclass
class Cell:
    """Mean ± std of one method on one task over its seeds, with the trainable parameter count."""

    mean: float
    std: float
    n: int
    trainable: int
    total: int

    def text(self) -> str:
        digits = 2 if abs(self.mean) < 10 else 1  # CIDEr lives near 0..1, recalls and accuracies in percent
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}" if self.n > 1 else f"{self.mean:.{digits}f}"


def summarize(records: list[RunRecord], rank: int) -> dict[str, dict[str, Cell]]:
    """{task: {method: Cell}} over the records at `rank` (frozen and full have no rank, any record counts)."""
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for r in records:
        if r.method in ("frozen", "full") or r.rank == rank:
            groups.setdefault((r.task, r.method), []).append(r)
    out: dict[str, dict[str, Cell]] = {}
    for (task, method), rs in groups.items():
        values = [r.value for r in rs]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        out.setdefault(task, {})[method] = Cell(
            statistics.fmean(values), std, len(values), rs[0].trainable, rs[0].total
        )
    return out


def gap_closed(cells: dict[str, Cell], method: str) -> float:
    """Percent of the frozen-to-full gap that `method` closes on one task (NaN without both ends or a gap)."""
    if method not in cells or "frozen" not in cells or "full" not in cells:
        return math.nan
    lo, hi = cells["frozen"].mean, cells["full"].mean
    if abs(hi - lo) < 1e-9:
        return math.nan
    return 100.0 * (cells[method].mean - lo) / (hi - lo)


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def write_tables(records: list[RunRecord], out: Path, rank: int, methods: list[str], tasks: list[str]) -> str:
    """Write `transfer.csv` (long form) and `transfer.md` (wide form); returns the Markdown."""
    table = summarize(records, rank)
    tasks = [t for t in tasks if t in table]
    methods = [m for m in methods if any(m in table[t] for t in tasks)]
    with (out / "transfer.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "task", "metric", "mean", "std", "n_seeds", "trainable_params", "total_params",
                    "trainable_percent", "gap_closed_percent"])  # fmt: skip
        for m in methods:
            for t in tasks:
                if m in table[t]:
                    c = table[t][m]
                    w.writerow([m, t, DEMO_TASKS[t].metric, f"{c.mean:.4f}", f"{c.std:.4f}", c.n, c.trainable,
                                c.total, f"{100 * c.trainable / c.total:.4f}", f"{gap_closed(table[t], m):.1f}"])  # fmt: skip
    head = ["method", "trainable params (% of model)"]
    head += [f"{DEMO_TASKS[t].label} {DEMO_TASKS[t].metric}" for t in tasks] + ["gap closed (mean)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        cells = [table[t].get(m) for t in tasks]
        first = next(c for c in cells if c is not None)
        params = f"{_fmt_params(first.trainable)} ({100 * first.trainable / first.total:.2f}%)"
        gaps = [gap_closed(table[t], m) for t in tasks]
        gaps = [g for g in gaps if not math.isnan(g)]
        mean_gap = f"{statistics.fmean(gaps):.0f}%" if gaps else "-"
        row = [m, params] + [c.text() if c else "-" for c in cells] + [mean_gap]
        lines.append("| " + " | ".join(row) + " |")
    params_rows = ["", "Trainable parameters per task model:", "",
                   "| method | " + " | ".join(DEMO_TASKS[t].label for t in tasks) + " |",
                   "|" + "---|" * (len(tasks) + 1)]  # fmt: skip
    for m in methods:
        params_rows.append(
            f"| {m} | " + " | ".join(_fmt_params(table[t][m].trainable) if m in table[t] else "-" for t in tasks) + " |"
        )
    gap_rows = ["", "Share of the frozen-to-full gap closed (100% = as good as full fine-tuning):", "",
                "| method | " + " | ".join(DEMO_TASKS[t].label for t in tasks) + " |",
                "|" + "---|" * (len(tasks) + 1)]  # fmt: skip
    for m in methods:
        if m in ("frozen", "full"):
            continue
        gaps = [gap_closed(table[t], m) for t in tasks]
        gap_rows.append(f"| {m} | " + " | ".join("-" if math.isnan(g) else f"{g:.0f}%" for g in gaps) + " |")
    n_seeds = max((c.n for t in tasks for c in table[t].values()), default=0)
    split = records[0].split if records else "test"
    note = (f"Domain B `{split}` split; mean ± std over {n_seeds} seed(s) (frozen: one evaluation, it has no "
            f"randomness); adapter rank {rank}.")  # fmt: skip
    md = "\n".join([note, "", *lines, *params_rows, *gap_rows]) + "\n"
    (out / "transfer.md").write_text(md)
    return md


def plot_rank_sweep(records: list[RunRecord], task: str, ranks: list[int], out: Path) -> Path | None:
    """`rank_sweep.png` + `.csv`: metric (mean over seeds) and trainable parameters against rank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    fig, (ax_m, ax_p) = plt.subplots(1, 2, figsize=(10, 4))
    for method, marker in (("unitrans", "o"), ("lora", "s")):
        pts = []
        for r in ranks:
            rs = [x for x in records if x.task == task and x.method == method and x.rank == r]
            if rs:
                vals = [x.value for x in rs]
                std = statistics.stdev(vals) if len(vals) > 1 else 0.0
                pts.append((r, statistics.fmean(vals), std, rs[0].trainable))
                rows.append([method, r, f"{pts[-1][1]:.4f}", f"{std:.4f}", len(vals), rs[0].trainable])
        if pts:
            xs = [p[0] for p in pts]
            ax_m.errorbar(xs, [p[1] for p in pts], yerr=[p[2] for p in pts], marker=marker, capsize=3, label=method)
            ax_p.plot(xs, [p[3] for p in pts], marker=marker, label=method)
    if not rows:
        plt.close(fig)
        return None
    metric = DEMO_TASKS[task].metric
    for method, style in (("frozen", ":"), ("full", "--")):
        rs = [x.value for x in records if x.task == task and x.method == method]
        if rs:
            ax_m.axhline(statistics.fmean(rs), color="gray", linestyle=style, label=method)
    for ax in (ax_m, ax_p):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(r) for r in ranks])
        ax.set_xlabel("rank r")
        ax.grid(alpha=0.3)
        ax.legend()
    ax_m.set_ylabel(f"{DEMO_TASKS[task].label} {metric} (domain B)")
    ax_p.set_ylabel("trainable parameters")
    ax_p.set_yscale("log")
    fig.suptitle(f"Rank sweep on the {DEMO_TASKS[task].label} demo (tiny BLIP, shapes A -> B)")
    fig.tight_layout()
    png = out / "rank_sweep.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    with (out / "rank_sweep.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "rank", metric, "std", "n_seeds", "trainable_params"])
        w.writerows(rows)
    return png


def log_summary(out: Path, tracking_uri: str | None, params: dict) -> str | None:
    """One MLflow run in the benchmark's experiment that holds the tables and the plot as artifacts."""
    from ..config.schema import TrackingConfig
    from ..tracking import build_tracker

    tracker = build_tracker(TrackingConfig(experiment=EXPERIMENT, tracking_uri=tracking_uri), 0, out / "summary_run")
    run_id = tracker.start("transfer-summary", {"kind": "summary"}, params)
    for name in ("transfer.md", "transfer.csv", "runs.jsonl", "rank_sweep.png", "rank_sweep.csv"):
        if (out / name).is_file():
            tracker.log_artifact(out / name)
    tracker.finish("FINISHED")
    return run_id


# ---------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(
        prog="python -m unitrans_ds.demo.transfer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="methods (default: all)")
    p.add_argument("--tasks", nargs="+", default=list(DEMO_TASKS), choices=list(DEMO_TASKS), help="demo tasks")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds (default: 0 1 2)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per trained run (default: %(default)s)")
    p.add_argument("--max_steps", type=int, default=None, help="cap on optimizer steps per run (overrides epochs)")
    p.add_argument("--batch", type=int, default=16, help="samples per optimizer step (default: %(default)s)")
    p.add_argument("--rank", type=int, default=16, help="adapter rank of the main table (default: %(default)s)")
    p.add_argument("--lr", type=float, default=None, help="one learning rate for every method (default: per method)")
    p.add_argument("--split", choices=("val", "test"), default="test", help="domain B split evaluated at the end")
    p.add_argument("--sweep_ranks", nargs="+", type=int, default=[2, 4, 8, 16, 32], help="ranks of the sweep")
    p.add_argument("--sweep_seeds", nargs="+", type=int, default=[0], help="seeds of the sweep (default: 0)")
    p.add_argument("--no_sweep", action="store_true", help="skip the rank sweep")
    p.add_argument("--out", default="benchmarks/results", help="tables, runs.jsonl, plot (default: %(default)s)")
    p.add_argument("--pretrained", default="pretrained", help="folder with tiny-blip-{retrieval,captioning,vqa}/")
    p.add_argument("--shards", default="shards/demo", help="demo shards root (image_b/, video_b/)")
    p.add_argument("--run_root", default="runs/transfer", help="trainer run folders (adapters, eval outputs)")
    p.add_argument(
        "--tracking_uri",
        default=None,
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else MLflow's default ./mlflow.db, where `mlflow ui` looks)",
    )
    p.add_argument("--ds_config", default="ds_configs/zero0.json", help="DeepSpeed JSON (one rank)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared CPU)")
    p.add_argument("--fresh", action="store_true", help="ignore (and overwrite) the runs already in runs.jsonl")
    return p.parse_args(argv)


def _plan(args: argparse.Namespace, budget: Budget) -> list[tuple[str, str, int, int]]:
    """(task, method, seed, rank) of every run: the main grid, then the rank sweep."""
    plan = []
    for s in args.seeds:  # seed-major, so that an interrupted benchmark has every task at the first seed
        for t in args.tasks:
            for m in args.methods:
                if m != "frozen" or s == args.seeds[0]:
                    plan.append((t, m, s, budget.rank))
    if not args.no_sweep and "image_retrieval" in args.tasks:
        for m in ("unitrans", "lora"):
            for r in args.sweep_ranks:
                for s in args.sweep_seeds:
                    if not (r == budget.rank and s in args.seeds and m in args.methods):
                        plan.append(("image_retrieval", m, s, r))
    return plan


def _check_inputs(args: argparse.Namespace) -> str | None:
    pretrained, shards = Path(args.pretrained), Path(args.shards)
    for t in args.tasks:
        folder = pretrained / f"tiny-blip-{DEMO_TASKS[t].backbone}"
        if not (folder / "config.json").is_file():
            return f"{folder} is not a save_pretrained folder; run `python -m unitrans_ds.demo.pretrain` first"
        for split in ("train", args.split):
            if not (shards / DEMO_TASKS[t].shards / split / "manifest.json").is_file():
                return f"{shards / DEMO_TASKS[t].shards / split} holds no manifest.json; see shards/README.md"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = _check_inputs(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs_file = out / "runs.jsonl"
    if args.fresh and runs_file.exists():
        runs_file.unlink()
    budget = Budget(args.epochs, args.max_steps, args.batch, args.rank, args.lr, args.split)
    records = [r for r in load_records(runs_file) if r.budget == budget.tag()]
    done = {(r.task, r.method, r.seed, r.rank) for r in records}
    plan = _plan(args, budget)
    todo = [p for p in plan if p not in done]
    print(f"[transfer] {len(plan)} runs planned, {len(plan) - len(todo)} already in {runs_file}", flush=True)
    t0 = time.perf_counter()
    bar = tqdm(todo, desc="transfer", unit="run")
    for task, method, seed, rank in bar:
        bar.set_postfix_str(f"{task}/{method}/r{rank}/s{seed}")
        run_budget = Budget(budget.epochs, budget.max_steps, budget.batch, rank, budget.lr, budget.split)
        record = run_one(
            DEMO_TASKS[task], method, seed, run_budget, Path(args.pretrained), Path(args.shards),
            Path(args.run_root), args.tracking_uri, args.ds_config,
        )  # fmt: skip
        record.budget = budget.tag()
        append_record(runs_file, record)
        records.append(record)
        tqdm.write(
            f"[transfer] {task:<16}{method:<16}r{rank:<3}seed {seed}: {record.metric} {record.value:.2f} "
            f"({_fmt_params(record.trainable)} trainable, {record.steps} steps, {record.seconds:.0f} s)"
        )
    wanted = {(t, m, s, r) for t, m, s, r in plan}
    mine = [r for r in records if (r.task, r.method, r.seed, r.rank) in wanted]
    md = write_tables(mine, out, budget.rank, list(args.methods), list(args.tasks))
    if not args.no_sweep and "image_retrieval" in args.tasks:
        plot_rank_sweep(mine, "image_retrieval", sorted(set(args.sweep_ranks)), out)
    params = {"methods": " ".join(args.methods), "tasks": " ".join(args.tasks), "seeds": str(args.seeds),
              "epochs": args.epochs, "max_steps": args.max_steps, "batch": args.batch, "rank": args.rank,
              "split": args.split}  # fmt: skip
    log_summary(out, args.tracking_uri, params)
    print(md)
    print(f"[transfer] {len(todo)} runs in {time.perf_counter() - t0:.0f} s; results in {out}/", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:  # after the last collective, on success, error and stop alike
        shutdown_distributed()
