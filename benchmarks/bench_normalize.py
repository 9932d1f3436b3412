"""The loader's last step, uint8 batch -> normalized float batch in the consuming process, two ways and two
memory settings, side by side.

    python benchmarks/bench_normalize.py [--batch 16] [--size 384] [--batches 20] [--rounds 4]

- `table`: `normalize_batch` on CPU (a per-channel lookup table through OpenCV's LUT, one contiguous write per value);
- `ops`: the device path run on CPU (a strided uint8 -> float copy, then an in-place multiply and add);
each with torch's transparent-huge-page switch for CPU allocations of 2 MB and more off and on
(`THP_MEM_ALLOC_ENABLE=0|1`; off by default, and the project leaves it so: see benchmarks/README.md). The switch is read once per process, so each round runs one child process per setting (order
flipped every round), and each child times both ways interleaved, on one thread, in CPU time, with a fresh output
batch per call as the loader makes. Reported: CPU ms per image (medians over rounds) and the ratios against
`ops` without huge pages (the loader before this change).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

WAYS = ("table", "ops")


def child(batch: int, size: int, batches: int) -> dict:
    """In a fresh process (its THP setting from the environment): CPU ms per image of each way."""
    import torch

    from unitrans_ds.data import transforms

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=g)

    def table() -> torch.Tensor:
        return transforms.normalize_batch(x)

    def ops() -> torch.Tensor:
        out = torch.empty((batch, 3, size, size), dtype=torch.float32)
        return transforms._normalize_ops(x, out)

    ways = {"table": table, "ops": ops}
    assert torch.equal(table(), ops())  # the same bits
    cpu = {w: 0.0 for w in WAYS}
    for i in range(batches):
        for w in WAYS if i % 2 == 0 else reversed(WAYS):
            c0 = time.process_time()
            ways[w]()
            cpu[w] += time.process_time() - c0
    return {w: 1000 * cpu[w] / (batches * batch) for w in WAYS}


def main(argv: list[str] | None = None) -> int:
    from common import add_json_arg, machine_line, write_results

    from unitrans_ds.cli import ArgumentParser

    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16, help="images per batch (the loader benchmark's default)")
    p.add_argument("--size", type=int, default=384, help="image side in pixels (BLIP retrieval: 384)")
    p.add_argument("--batches", type=int, default=20, help="batches per way in each child process")
    p.add_argument("--rounds", type=int, default=4, help="rounds; each runs one child per THP setting")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    add_json_arg(p, __file__)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.batch, args.size, args.batches)))
        return 0
    settings = ("0", "1")
    runs: dict[str, list[dict]] = {s: [] for s in settings}
    for r in range(args.rounds):
        for thp in settings if r % 2 == 0 else reversed(settings):
            cmd = [sys.executable, __file__, "--child", "--batch", str(args.batch), "--size", str(args.size),
                   "--batches", str(args.batches)]  # fmt: skip
            env = {**os.environ, "THP_MEM_ALLOC_ENABLE": thp}
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            runs[thp].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {r + 1}, THP {thp}: {runs[thp][-1]}", flush=True)
    med = {(thp, w): statistics.median(x[w] for x in runs[thp]) for thp in settings for w in WAYS}
    base = ("0", "ops")
    print(f"\nnormalize a batch of {args.batch} at {args.size} px, CPU ms per image, 1 thread, median of {args.rounds}")
    rows = {}
    for (thp, w), ms in med.items():
        per_round = [a[w] / b["ops"] for a, b in zip(runs[thp], runs["0"], strict=True)]
        rows[f"{w}, THP {thp}"] = {"cpu_ms_per_image": ms, "over_ops_thp0_rounds": per_round}
        print(f"{w:<6} THP {thp}: {ms:.3f} ms  / {base[1]}, THP 0: {ms / med[base]:.3f} "
              f"(rounds {min(per_round):.3f}..{max(per_round):.3f})")  # fmt: skip
    write_results(args.json, {"machine": machine_line(), "args": vars(args), "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
