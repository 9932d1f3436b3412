"""Shared helpers of the model benchmarks: interleaved timing, robust summaries, peak memory, the machine line.

Who calls it: `bench_adapters.py` and `bench_train_step.py` (run as scripts from the repository root, so this file
is imported as the top-level module `common`).

Timing: every variant gets `warmup` untimed runs, then `repeats` rounds in which each variant runs once; the order
flips every round (A B C, C B A, A B C, ...), so that slow drift of a shared machine (other jobs starting and
stopping) hits every variant alike. Ratios are reported as the median over rounds of the per-round ratio, which
also cancels drift, next to the ratio of medians. Wall time and process CPU time are both kept.

Peak memory: the CPU allocator of torch is plain malloc, which `tracemalloc` does not see, so the resident set
size of the process is read instead (`/proc/self/status`, VmHWM / VmRSS). `reset_peak_rss` clears the high-water
mark (Linux >= 4.0, `/proc/self/clear_refs`), so a peak can be measured net of the model-building phase.
Each variant should still be measured in its own process (`run_json_child`): freed memory that malloc keeps,
and the other variants' tensors, would otherwise be counted.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm


@dataclass
class Timings:
    """Seconds per run of one variant, in round order (wall clock and CPU time of this process, all threads)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def median(self, kind: str = "wall") -> float:
        return statistics.median(getattr(self, kind))


def add_machine_args(p) -> None:
    """`--threads`, shared by the model benchmarks (see README: measuring on a shared CPU)."""
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice, one per core). On a shared, busy machine 1 thread and "
        "the CPU-time ratios are the least noisy.",
    )


def interleaved(
    variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1, desc: str = "timing"
) -> dict[str, Timings]:
    """Time each callable `repeats` times in alternating order after `warmup` untimed calls each.

    A callable does one unit of work (one step, one forward) and must leave no state that slows the next call.
    Returns the timings per variant name. Shows a progress bar over all calls.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    names = list(variants)
    out = {n: Timings() for n in names}
    with tqdm(total=len(names) * (warmup + repeats), desc=desc, unit="run") as bar:
        for _ in range(warmup):
            for n in names:
                bar.set_postfix_str(f"warmup {n}")
                variants[n]()
                bar.update()
        for r in range(repeats):
            for n in names if r % 2 == 0 else reversed(names):
                bar.set_postfix_str(n)
                c0, w0 = time.process_time(), time.perf_counter()
                variants[n]()
                w1, c1 = time.perf_counter(), time.process_time()
                out[n].wall.append(w1 - w0)
                out[n].cpu.append(c1 - c0)
                bar.update()
    return out


@dataclass
class Ratio:
    """How `num` compares to `den`: median of the per-round ratios, its spread, and the ratio of the medians."""

    paired_median: float
    paired_min: float
    paired_max: float
    of_medians: float

    def __str__(self) -> str:
        return f"{self.paired_median:.3f} (rounds {self.paired_min:.3f}..{self.paired_max:.3f})"


def ratio(num: Timings, den: Timings, kind: str = "wall") -> Ratio:
    a, b = getattr(num, kind), getattr(den, kind)
    per_round = [x / y for x, y in zip(a, b, strict=True)]
    return Ratio(
        statistics.median(per_round), min(per_round), max(per_round), statistics.median(a) / statistics.median(b)
    )


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_bytes() -> int:
    """Resident set size of this process now (VmRSS), in bytes."""
    kib = _status_kib("VmRSS")
    if kib is None:
        raise RuntimeError("/proc/self/status has no VmRSS: the memory benchmark needs Linux")
    return kib * 1024


def peak_rss_bytes() -> int:
    """High-water mark of the resident set size (VmHWM; ru_maxrss where /proc is missing), in bytes."""
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024


def reset_peak_rss() -> bool:
    """Set the high-water mark to the current RSS. False where the kernel does not allow it (then peaks are gross)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def run_json_child(argv: list[str], timeout: float | None = None) -> dict:
    """Run `python argv...` in a fresh process and return the JSON object it prints as its last stdout line.

    Its stderr (progress bars, warnings) passes through. Raises with the child's output when it fails.
    """
    proc = subprocess.run(
        [sys.executable, *argv], stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout, check=False
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark child {' '.join(argv)} failed (exit {proc.returncode}); stdout:\n{proc.stdout}")
    return json.loads(lines[-1])


def machine_line() -> str:
    """Date, CPU, core count, torch threads and 1-minute load: what a reader needs to compare numbers."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{datetime.date.today().isoformat()}, {cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), load average {load:.1f} at start"
    )


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.1f} MiB"


# ---------------------------------------------------------------------------------------------- BLIP-base inputs
#: one caption long enough to fill the 35-token text length of BLIP's retrieval recipe with the demo vocabulary
CAPTION = "a small red circle is left of a large blue square and a green triangle sits below them on a white field"


def blip_base_config(image_size: int):
    """`BlipConfig()` defaults (BLIP-base: ViT-B/16, BERT-base with cross-attention, vocabulary 30524) at `image_size`.

    Changing the ViT's native size (instead of interpolating positions) keeps the forward what a checkpoint at that
    size computes.
    """
    from transformers import BlipConfig

    from unitrans_ds.models.build import random_init_config

    config = random_init_config(BlipConfig())  # HF's vision default would start the ViT near zero
    config.vision_config.image_size = image_size
    return config


def build_blip_base(task_class, image_size: int, seed: int = 0):
    """A randomly initialised BLIP-base model of `task_class`, fp32, eval mode (dropout is 0 in BLIP-base anyway)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = task_class(blip_base_config(image_size))
    return model.eval()


def retrieval_batch(batch: int, image_size: int, seed: int = 0) -> dict:
    """A retrieval training batch as the loaders produce it: pixels [B, 3, S, S], B captions, distinct image ids.

    The texts go through the bundled demo tokenizer, padded to 35 tokens; its ids (< 210) are valid rows of
    BLIP-base's 30524-row embedding, and compute does not depend on which ids they are.
    """
    g = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(batch, 3, image_size, image_size, generator=g),
        "text": [CAPTION] * batch,
        "image_idx": torch.arange(batch),
    }


# ---------------------------------------------------------------------------------------------- results as JSON
#: every benchmark writes its figures here as `<script>.json`, so that runs can be compared by a program
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def add_json_arg(p, script: str) -> None:
    """`--json PATH`, defaulting to `benchmarks/results/<script>.json` (`script`: the caller's `__file__`)."""
    default = RESULTS_DIR / f"{Path(script).stem}.json"
    p.add_argument(
        "--json", type=Path, default=default, help=f"Where to write every figure as JSON (default {default})."
    )


def write_results(path: Path, result: dict) -> None:
    """Write `result` (with the machine line) as indented JSON to `path`, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {path}")
