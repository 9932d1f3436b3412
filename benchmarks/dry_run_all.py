"""The dry run of every paper config, one after another, each in a fresh process, and the table of what it saw.

    python benchmarks/dry_run_all.py [--configs coco_retrieval vqav2 ...] [--reuse] [--ds_config ds_configs/zero2.json]

Each config runs exactly as docs/reproducing.md says: `python launchers/train.py --config configs/NAME.yaml
--dry_run` (a fresh process, so peak memory is that config's own). `--reuse` keeps a config's earlier
`runs/dry_run/NAME/dry_run.json` instead of running it again. Results: `benchmarks/results/dry_run_all.json` and a
markdown table on stdout (and in `benchmarks/results/dry_run_all.md`).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from unitrans_ds.cli import ArgumentParser  # noqa: E402

PAPER_CONFIGS = (
    "coco_retrieval",
    "flickr30k_retrieval",
    "coco_captioning",
    "vqav2",
    "msrvtt_retrieval",
    "didemo_retrieval",
    "msrvtt_qa",
)
RESULTS = ROOT / "benchmarks" / "results"


def run_one(name: str, ds_config: str, reuse: bool) -> dict:
    out = ROOT / "runs" / "dry_run" / name / "dry_run.json"
    if not (reuse and out.is_file()):
        cmd = [sys.executable, "launchers/train.py", "--ds_config", ds_config, "--config", f"configs/{name}.yaml",
               "--dry_run"]  # fmt: skip
        print("$ " + " ".join(cmd[1:]), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, check=False)
        if proc.returncode != 0:  # -9: killed, on a small shared machine usually by the kernel's OOM killer
            print(f"  {name}: FAILED, exit status {proc.returncode}", flush=True)
            return {"config": f"configs/{name}.yaml", "failed": f"exit status {proc.returncode}"}
        print(f"  {name}: {time.perf_counter() - t0:.0f} s wall", flush=True)
    return json.loads(out.read_text())


def table(rows: list[dict]) -> str:
    head = (
        "| config | task | px | frames | threads | build s | step 1 s | step 2 s | eval s | peak RSS MiB | "
        "real micro batch | est. activations bf16 GiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        name = Path(r["config"]).stem
        if "failed" in r:
            lines.append(f"| {name} | FAILED: {r['failed']} ||||||||||| ")
            continue
        s1, s2 = (r["step_seconds"] + [float("nan")] * 2)[:2]
        lines.append(
            f"| {name} | {r['task']} | {r['image_size']} | {r['frames'] or ''} | {r['torch_threads']} | "
            f"{r['build_seconds']:.0f} | "
            f"{s1:.0f} | {s2:.0f} | {r['eval_seconds']:.0f} | {r['peak_rss_mib_end']:,.0f} | "
            f"{r['real_micro_batch']} | {r['activations_bf16_gib']:.1f} |"
        )
    return head + "\n".join(lines) + "\n"


def plan_tables() -> str:
    """Estimates (no GPU measurement exists): micro batch x accumulation per GPU size, and GPU-hours."""
    from unitrans_ds.config import load_config
    from unitrans_ds.dryrun.plan import EFFECTIVE_TFLOPS, GPU_GIB, fitting_micro_batch, gpu_hours, memory_gib
    from unitrans_ds.models.known_checkpoints import architecture

    sizes = list(GPU_GIB)
    fit = (
        "| config | global batch | "
        + " | ".join(f"{g}: 8 GPUs / 16 GPUs" for g in sizes)
        + " | memory at the recipe's micro batch |\n"
    )
    fit += "|---" * (3 + len(sizes)) + "|\n"
    hours = (
        "| config | epochs | train GPU-h | eval GPU-h | total GPU-h | wall h on 8 GPUs |\n|---|---|---|---|---|---|\n"
    )
    for name in PAPER_CONFIGS:
        cfg = load_config(ROOT / "configs" / f"{name}.yaml")
        blip = architecture(cfg.model.init_from)
        cells = []
        for g in sizes:
            got = [fitting_micro_batch(cfg, blip, n, GPU_GIB[g]) for n in (8, 16)]
            cells.append(" / ".join(f"{m} x {a}" if m else "none" for m, a in (x or (None, None) for x in got)))
        mem = memory_gib(cfg, blip, cfg.train.micro_batch_size)
        fit += (
            f"| {name} | {cfg.train.global_batch_size} | "
            + " | ".join(cells)
            + f" | {mem:.1f} GiB (micro {cfg.train.micro_batch_size}) |\n"
        )
        h = gpu_hours(name, cfg, blip)
        total = h["train_gpu_hours"] + h["eval_gpu_hours"]
        hours += (
            f"| {name} | {cfg.train.epochs} | {h['train_gpu_hours']:.1f} | {h['eval_gpu_hours']:.1f} | {total:.1f} | "
            f"{total / 8:.1f} |\n"
        )
    return fit + f"\n(GPU-hours at an assumed {EFFECTIVE_TFLOPS:.0f} TFLOP/s sustained per GPU)\n\n" + hours


def main() -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=list(PAPER_CONFIGS), choices=PAPER_CONFIGS)
    p.add_argument("--ds_config", default="ds_configs/zero2.json")
    p.add_argument("--reuse", action="store_true", help="keep earlier runs/dry_run/NAME/dry_run.json results")
    p.add_argument("--plan", action="store_true", help="only print the estimate tables (fit per GPU, GPU-hours)")
    args = p.parse_args()
    if args.plan:
        sys.path.insert(0, str(ROOT))
        text = plan_tables()
        (RESULTS / "paper_plan.md").write_text(text)
        print(text)
        return 0
    rows = [run_one(name, args.ds_config, args.reuse) for name in args.configs]
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}",
              "ds_config": args.ds_config, "runs": rows}  # fmt: skip
    (RESULTS / "dry_run_all.json").write_text(json.dumps(record, indent=2))
    text = table(rows)
    (RESULTS / "dry_run_all.md").write_text(text)
    print(text)
    return 1 if any("failed" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
