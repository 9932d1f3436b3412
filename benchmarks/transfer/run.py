"""Transfer benchmark: every method on every task of the synthetic `scenes` world, tiny BLIPs pretrained on domain A
adapted to domain B, over seeds, with paired statistics.

    python -m benchmarks.transfer [--tasks ...] [--methods ...] [--seeds 0 1 2 3 4] [--workers 2]
                                  [--max_steps 200] [--out benchmarks/results] [--no_sweep]

Phases, each resumable (`runs.jsonl` holds every finished run; a rerun skips what it holds at the same budget on
the same backbones: each run records its backbone's fingerprint, and runs on other weights are rerun):
1. **select**: every trained method at every learning rate of its grid (`suite.py`), first seed, domain B val;
   the best val metric picks the method's lr per task. A best lr at either end of the grid gets the next lr
   beyond it (half-decade steps, at most 2 per side), for every method alike.
2. **report**: every method at its chosen lr, every seed, domain B test (`frozen`: one evaluation).
3. **sweep**: `unitrans` and `lora` at ranks 2..32, every seed, image retrieval, test, at the lr chosen at the
   main rank.
A row that trains exactly as another on a task (`unitrans` on captioning is `vcra`, on VQA `vcra+qasn`) is not
run again: its cells are that row's runs, marked `(= vcra)`.
A seed sets the shared matrices' seed, the training seed and the data order. Runs go through the project's
`Trainer`, one rank each, in `--workers` processes (one CPU thread each: results do not depend on it). Each is an
MLflow run in the experiment `unitrans-transfer`.

`--report_only` writes the tables of the runs finished so far (cells of fewer seeds say so) and runs nothing.

Writes to `--out`: `runs.jsonl`, `transfer.md` (main table, ablation ladder with paired 95% intervals, chosen lrs,
gap check), `transfer.csv`, `rank_sweep.png` / `.csv`.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import time
from pathlib import Path

from unitrans_ds.cli import ArgumentParser

from .execute import Budget, Inputs, Job, backbone_folder, run_job
from .records import RunRecord, append_record, backbone_fingerprint, load_records, split_by_backbone
from .suite import SWEEP_RANKS, SWEEP_VARIANTS, TASKS, VARIANTS
from .tables import ablation_table, chosen_lr_table, gap_lines, main_table, plot_rank_sweep, write_csv


def select_jobs(tasks: list[str], methods: list[str], seed: int, rank: int, fixed_lr: float | None) -> list[Job]:
    if fixed_lr is not None:
        return []
    return [
        Job("select", t, m, seed, rank, lr, "val")
        for t in tasks
        for m in methods
        if m != "frozen" and VARIANTS[m].runs_on(TASKS[t])
        for lr in VARIANTS[m].lr_grid
    ]


#: how far the selection may walk past either end of a grid, in half-decade steps, while the best lr is at the end
MAX_EXTENSIONS = 2


def _half_decade(lr: float, up: bool) -> float:
    """The next lr of the grids' half-decade ladder (1e-3 -> 3e-3 -> 1e-2; down: 1e-3 -> 3e-4)."""
    exponent = math.floor(math.log10(lr) + 1e-9)
    ladder = [f * 10.0**e for e in (exponent - 1, exponent, exponent + 1) for f in (1, 3)]
    i = min(range(len(ladder)), key=lambda k: abs(math.log(ladder[k] / lr)))  # lr's rung
    return float(f"{ladder[i + 1 if up else i - 1]:.0e}")


def extension_jobs(records: list[RunRecord], tasks: list[str], methods: list[str], seed: int, rank: int) -> list[Job]:
    """A grid whose best val lr is its smallest or largest tried lr gets the next lr beyond it (up to
    `MAX_EXTENSIONS` per side): a best at the edge of a grid says only that the optimum lies beyond it. The same
    rule for every method; it runs once the whole grid has run."""
    jobs = []
    for t in tasks:
        for m in methods:
            grid = VARIANTS[m].lr_grid
            if m == "frozen" or not VARIANTS[m].runs_on(TASKS[t]):
                continue
            val = {r.lr: r.value for r in records if r.phase == "select" and r.task == t and r.method == m}
            if not set(grid) <= set(val):
                continue
            best = max(sorted(val), key=lambda lr: val[lr])  # ties: the smaller lr, as `choose_lrs`
            tried = sorted(val)
            for up, end, beyond in ((True, tried[-1], [x for x in tried if x > grid[-1]]),
                                    (False, tried[0], [x for x in tried if x < grid[0]])):  # fmt: skip
                if best == end and len(beyond) < MAX_EXTENSIONS:
                    jobs.append(Job("select", t, m, seed, rank, _half_decade(end, up), "val"))
    return jobs


def select_extensions(records: list[RunRecord], args: argparse.Namespace) -> list[Job]:
    """The next lrs beyond the grids' edges that the finished selection runs call for (none with a fixed --lr)."""
    if args.lr is not None:
        return []
    jobs = extension_jobs(records, list(args.tasks), list(args.methods), args.seeds[0], args.rank)
    if jobs:
        print(f"[transfer] select: {len(jobs)} lrs beyond a grid's edge, where its best lies", flush=True)
    return jobs


def choose_lrs(records: list[RunRecord], fixed_lr: float | None) -> dict[tuple[str, str], float]:
    """(task, method) -> the grid lr with the best val metric (ties: the smaller lr), or `fixed_lr` everywhere."""
    if fixed_lr is not None:
        return {(t, m): fixed_lr for t in TASKS for m in VARIANTS if m != "frozen"}
    best: dict[tuple[str, str], tuple[float, float]] = {}
    for r in records:
        if r.phase == "select":
            key = (r.task, r.method)
            if key not in best or (r.value, -r.lr) > (best[key][0], -best[key][1]):
                best[key] = (r.value, r.lr)
    return {k: lr for k, (_, lr) in best.items()}


def report_jobs(
    tasks: list[str], methods: list[str], seeds: list[int], rank: int, chosen: dict[tuple[str, str], float]
) -> list[Job]:
    jobs = []
    for s in seeds:  # seed-major: an interrupted benchmark has every cell at the first seeds
        for t in tasks:
            for m in methods:
                if not VARIANTS[m].runs_on(TASKS[t]):
                    continue
                if m == "frozen":
                    if s == seeds[0]:
                        jobs.append(Job("report", t, m, s, rank, None, "test"))
                elif (t, m) in chosen:
                    jobs.append(Job("report", t, m, s, rank, chosen[(t, m)], "test"))
    return jobs


def sweep_jobs(seeds: list[int], ranks: list[int], main_rank: int, chosen: dict[tuple[str, str], float]) -> list[Job]:
    return [  # seed-major, as the report: an interrupted sweep has every rank at the first seeds
        Job("report", "image_retrieval", m, s, r, chosen[("image_retrieval", m)], "test")
        for s in seeds
        for r in ranks
        if r != main_rank
        for m in SWEEP_VARIANTS
        if ("image_retrieval", m) in chosen
    ]


# ---------------------------------------------------------------------- running jobs
def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _work(args: tuple[Job, Inputs]) -> RunRecord:
    return run_job(*args)


def _init_tracking_store(tracking_uri: str | None) -> None:
    from mlflow.tracking import MlflowClient

    from .execute import EXPERIMENT

    client = MlflowClient(tracking_uri=tracking_uri)  # None: MLFLOW_TRACKING_URI, else MLflow's default store
    if client.get_experiment_by_name(EXPERIMENT) is None:
        client.create_experiment(EXPERIMENT)


def run_all(jobs: list[Job], inputs: Inputs, workers: int, runs_file: Path, records: list[RunRecord]) -> None:
    """Run `jobs` (in this process, or in `workers` processes), appending each record as it finishes."""
    if not jobs:
        return
    t0 = time.perf_counter()

    def done(i: int, record: RunRecord) -> None:
        append_record(runs_file, record)
        records.append(record)
        eta = (time.perf_counter() - t0) / i * (len(jobs) - i)
        print(
            f"[transfer] {i}/{len(jobs)} {record.phase:<6} {record.task:<16} {record.method:<18} r{record.rank:<3}"
            f"lr {record.lr} seed {record.seed} {record.split}: {record.metric} {record.value:.3f} "
            f"({record.seconds:.0f} s; eta {eta / 60:.0f} min)",
            flush=True,
        )

    if workers <= 1:
        for i, job in enumerate(jobs, 1):
            done(i, run_job(job, inputs))
        return
    # The MLflow store and experiment are created here, once: workers creating a fresh SQLite store side by side
    # race on its schema ("table ... already exists").
    _init_tracking_store(inputs.tracking_uri)
    # Each worker process holds its own one-rank gloo group and runs jobs one after another; spawn, not fork:
    # a forked child would inherit this process's torch threads and any group.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_worker_init, maxtasksperchild=8) as pool:
        for i, record in enumerate(pool.imap_unordered(_work, [(j, inputs) for j in jobs]), 1):
            done(i, record)


def _pending(jobs: list[Job], records: list[RunRecord]) -> list[Job]:
    have = {r.key() for r in records}
    return [j for j in jobs if j.key() not in have]


# ---------------------------------------------------------------------- report
def write_report(records: list[RunRecord], args: argparse.Namespace, chosen: dict, out: Path) -> str:
    tasks, methods = list(args.tasks), list(args.methods)
    parts = [
        "## Main table", "", *main_table(records, tasks, methods, args.rank, len(args.seeds)), "",
        "## Ablation ladder (paired over seeds)", "", *ablation_table(records, tasks, args.rank), "",
        "## Learning rates chosen on domain B val", "", *chosen_lr_table(records, chosen, tasks, methods), "",
        "## Frozen-to-full gap against seed noise (bar: gap >= 5 x the larger std of full and unitrans)", "",
        *gap_lines(records, tasks, args.rank), "",
        f"Budget: {Budget(args.max_steps, args.batch).tag()}; synthetic data (`scenes`), tiny BLIPs: not the paper's "
        "benchmarks.",
    ]  # fmt: skip
    md = "\n".join(parts) + "\n"
    (out / "transfer.md").write_text(md)
    write_csv(records, out, tasks, methods, args.rank)
    if not args.no_sweep and "image_retrieval" in tasks:
        ranks = sorted({*args.sweep_ranks, args.rank})
        plot_rank_sweep(records, "image_retrieval", ranks, [m for m in SWEEP_VARIANTS if m in methods], out)
    return md


def log_summary(out: Path, run_dir: Path, tracking_uri: str | None, params: dict) -> str | None:
    """One MLflow run in the benchmark's experiment holding the tables, runs.jsonl and the plot as artifacts; its
    tracking journal goes to `run_dir`, beside the trainer runs' folders, not into the results."""
    from unitrans_ds.config.schema import TrackingConfig
    from unitrans_ds.tracking import build_tracker

    from .execute import EXPERIMENT

    tracker = build_tracker(TrackingConfig(experiment=EXPERIMENT, tracking_uri=tracking_uri), 0, run_dir)
    run_id = tracker.start("transfer-summary", {"kind": "summary"}, params)
    for name in ("transfer.md", "transfer.csv", "runs.jsonl", "rank_sweep.png", "rank_sweep.csv"):
        if (out / name).is_file():
            tracker.log_artifact(out / name)
    tracker.finish("FINISHED")
    return run_id


# ---------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(
        prog="python -m benchmarks.transfer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--methods", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), help="rows (default: all)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS), help="tasks (default: all)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="seeds (default: 0 1 2 3 4)")
    p.add_argument("--max_steps", type=int, default=Budget.max_steps, help="optimizer steps per trained run")
    p.add_argument("--batch", type=int, default=Budget.batch, help="samples per optimizer step")
    p.add_argument("--rank", type=int, default=16, help="adapter rank of the main table (default: %(default)s)")
    p.add_argument("--lr", type=float, default=None, help="one lr for every method: skips the lr selection")
    p.add_argument("--sweep_ranks", nargs="+", type=int, default=list(SWEEP_RANKS), help="ranks of the sweep")
    p.add_argument("--no_sweep", action="store_true", help="skip the rank sweep")
    p.add_argument("--workers", type=int, default=1, help="processes running jobs side by side (one thread each)")
    p.add_argument("--out", default="benchmarks/results", help="tables, runs.jsonl, plot (default: %(default)s)")
    p.add_argument(
        "--pretrained", default="pretrained/scenes", help="folder with tiny-blip-{retrieval,captioning,vqa}/"
    )
    p.add_argument("--shards", default="shards/scenes", help="scenes shards root (image_b/, video_b/)")
    p.add_argument("--run_root", default="runs/transfer", help="trainer run folders (adapters, eval outputs)")
    p.add_argument(
        "--tracking_uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db)"
    )
    p.add_argument("--ds_config", default="ds_configs/zero0.json", help="DeepSpeed JSON (one rank)")
    p.add_argument("--fresh", action="store_true", help="ignore (and delete) the runs already in runs.jsonl")
    p.add_argument(
        "--report_only",
        action="store_true",
        help="run nothing: write the tables from the runs already in runs.jsonl (an unfinished benchmark's cells "
        "say how many seeds they hold)",
    )
    return p.parse_args(argv)


def check_inputs(args: argparse.Namespace) -> str | None:
    pretrained, shards = Path(args.pretrained), Path(args.shards)
    for t in args.tasks:
        folder = backbone_folder(t, pretrained)
        if not (folder / "config.json").is_file():
            return f"{folder} is not a save_pretrained folder; run `python -m benchmarks.transfer.pretrain` first"
        for split in ("train", "val", "test"):
            if not (shards / TASKS[t].shards / split / "manifest.json").is_file():
                return f"{shards / TASKS[t].shards / split} holds no manifest.json; run ./shards/make_scenes.sh first"
    if args.workers < 1:
        return f"--workers must be >= 1, got {args.workers}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = check_inputs(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs_file = out / "runs.jsonl"
    if args.fresh and runs_file.exists():
        runs_file.unlink()
    budget = Budget(args.max_steps, args.batch)
    inputs = Inputs(args.pretrained, args.shards, args.run_root, args.tracking_uri, args.ds_config, budget)
    backbones = {t: backbone_fingerprint(backbone_folder(t, args.pretrained)) for t in args.tasks}
    records, other = split_by_backbone(load_records(runs_file, budget.tag()), backbones)
    if other:
        print(
            f"[transfer] {len(other)} runs in {runs_file} were made on other backbones than {args.pretrained}'s "
            f"(tasks: {', '.join(sorted({r.task for r in other}))}): left out of the tables"
            + ("" if args.report_only else " and rerun"),
            flush=True,
        )
    methods, tasks, seeds = list(args.methods), list(args.tasks), list(args.seeds)
    t0 = time.perf_counter()
    if args.report_only:
        print(write_report(records, args, choose_lrs(records, args.lr), out))
        return 0

    select = _pending(select_jobs(tasks, methods, seeds[0], args.rank, args.lr), records) or select_extensions(
        records, args
    )
    print(f"[transfer] select: {len(select)} runs to go; {len(records)} runs already in {runs_file}", flush=True)
    while select:
        run_all(select, inputs, args.workers, runs_file, records)
        select = select_extensions(records, args)
    chosen = choose_lrs(records, args.lr)

    report = report_jobs(tasks, methods, seeds, args.rank, chosen)
    if not args.no_sweep and "image_retrieval" in tasks:
        report += sweep_jobs(seeds, args.sweep_ranks, args.rank, chosen)
    report = _pending(report, records)
    print(f"[transfer] report and sweep: {len(report)} runs to go", flush=True)
    run_all(report, inputs, args.workers, runs_file, records)

    md = write_report(records, args, chosen, out)
    params = {"methods": " ".join(methods), "tasks": " ".join(tasks), "seeds": " ".join(map(str, seeds)),
              "budget": budget.tag(), "rank": args.rank, "lr": args.lr}  # fmt: skip
    log_summary(out, Path(args.run_root) / "summary", args.tracking_uri, params)
    print(md)
    print(f"[transfer] done in {time.perf_counter() - t0:.0f} s; results in {out}/", flush=True)
    return 0
