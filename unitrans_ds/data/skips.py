"""Counting the samples a loader skips, with rate-limited warnings, and summing the counts for the trainer.

Bad data (a truncated shard, garbage image bytes, a sample without its json) must not stop a long run, and
must not vanish silently either. Each loader pipeline owns a `SkipCounter`; inside a DataLoader worker it is
that worker's copy. The counts of the current pass ride along with every batch (`batch["skipped"]`, with
`batch["worker_id"]`), so the trainer sees them without any extra channel; `SkipTotals` keeps the latest
counts per worker and sums them. Across ranks the trainer all-reduces `SkipTotals.totals()` if it wants a
global number.

Kinds used by the loaders: `shard_read` (tar stream errors, e.g. a shard truncated mid-file; one count per
error, which may cost the rest of that shard), `bad_json`, `incomplete_sample` (no json or no image / frames),
`image_decode` (undecodable image or frame bytes).

Those are events. What was lost is counted apart, in samples and pairs (captions or questions), per shard: the
training pipeline compares what each shard gave against the manifest's counts when it finishes reading it, and
adds the samples whose image would not decode (each sample once, with all its pairs). This `ledger` rides along
with each batch too (`batch["lost"]`); `merge_ledgers` combines workers, ranks and repeated reads of a shard,
and `loss_summary` turns it into the end-of-run report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

logger = logging.getLogger(__name__)


class DataLossError(ValueError):
    """More of the training data was lost than `data.max_skip_fraction` allows."""


class SkipCounter:
    """Per-worker skip counts by kind, logging at most one warning per `warn_interval` seconds per kind."""

    def __init__(self, warn_interval: float = 60.0, name: str = "loader") -> None:
        self.warn_interval = warn_interval
        self.name = name
        self.counts: dict[str, int] = {}
        self._last_warn: dict[str, float] = {}
        self.ledger: dict[str, dict] = {}

    def reset(self) -> None:
        """Start a new pass (called when a worker starts iterating an epoch)."""
        self.counts = {}
        self._last_warn = {}
        self.ledger = {}

    def shard_read(self, shard: str, samples: int, pairs: int, kinds: dict[str, int]) -> None:
        """A finished read of `shard` came `samples` / `pairs` short of its manifest counts (kinds: samples)."""
        entry = self.ledger.setdefault(shard, _empty())
        if (samples, pairs) > (entry["samples"], entry["pairs"]):  # a re-read of the same shard loses the same
            entry.update(samples=samples, pairs=pairs, kinds=dict(kinds))

    def decode_failed(self, shard: str, sample: str, pairs: int) -> None:
        """The image of `sample` (with its `pairs` pairs) would not decode; counted once however often seen."""
        self.ledger.setdefault(shard, _empty())["decode"][sample] = pairs

    def skip(self, kind: str, detail: str) -> None:
        """Count one skipped item of `kind`; `detail` (the sample key or shard and the error) goes in the log."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        now = time.monotonic()
        last = self._last_warn.get(kind)
        if last is None or now - last >= self.warn_interval:
            self._last_warn[kind] = now
            logger.warning(
                "%s: skipped %s (%d so far in this worker this epoch; further warnings of this kind are limited "
                "to one per %.0f s): %s",
                self.name,
                kind,
                self.counts[kind],
                self.warn_interval,
                detail,
            )

    def handler(self, kind: str) -> Callable[[Exception], bool]:
        """A WebDataset exception handler that counts the error and tells WebDataset to continue."""

        def handle(exn: Exception) -> bool:
            self.skip(kind, repr(exn)[:500])
            return True

        return handle

    def snapshot(self) -> dict[str, int]:
        """A copy of the counts so far, safe to put into a batch."""
        return dict(self.counts)

    def ledger_snapshot(self) -> dict[str, dict]:
        return merge_ledgers([self.ledger])


def _empty() -> dict:
    return {"samples": 0, "pairs": 0, "kinds": {}, "decode": {}}


def merge_ledgers(ledgers: Iterable[Mapping[str, dict]]) -> dict[str, dict]:
    """Combine loss ledgers (workers, ranks, passes): per shard the worst read, and the union of undecodable
    samples. Both are idempotent, so merging a ledger with an older copy of itself changes nothing."""
    out: dict[str, dict] = {}
    for ledger in ledgers:
        for shard, e in ledger.items():
            cur = out.setdefault(shard, _empty())
            if (e["samples"], e["pairs"]) > (cur["samples"], cur["pairs"]):
                cur.update(samples=e["samples"], pairs=e["pairs"], kinds=dict(e["kinds"]))
            cur["decode"] = {**cur["decode"], **e["decode"]}
    return out


def loss_summary(ledger: Mapping[str, dict], total_samples: int, total_pairs: int, unit: str) -> dict:
    """What a pass over the training data lost: totals, per kind (samples) and per shard (naming each bad one)."""
    shards: dict[str, dict] = {}
    kinds: dict[str, int] = {}
    for shard, e in sorted(ledger.items()):
        per_kind = dict(e["kinds"])
        if e["decode"]:
            per_kind["image_decode"] = per_kind.get("image_decode", 0) + len(e["decode"])
        samples = e["samples"] + len(e["decode"])
        if not samples:
            continue
        shards[Path(shard).name] = {"samples": samples, "pairs": e["pairs"] + sum(e["decode"].values()), **per_kind}
        for k, n in per_kind.items():
            kinds[k] = kinds.get(k, 0) + n
    lost_samples = sum(s["samples"] for s in shards.values())
    lost_pairs = sum(s["pairs"] for s in shards.values())
    return {
        "lost_samples": lost_samples,
        "lost_pairs": lost_pairs,
        "pair_unit": unit,
        "total_samples": total_samples,
        "total_pairs": total_pairs,
        "lost_fraction": lost_samples / max(total_samples, 1),
        "kinds": kinds,
        "shards": shards,
    }


def describe_loss(summary: Mapping) -> str:
    """One line for the log: totals against the manifest, then each bad shard."""
    if not summary["lost_samples"]:
        return f"no training data lost ({summary['total_samples']} samples in the manifest)"
    shards = "; ".join(
        f"{name}: {e['samples']} samples, {e['pairs']} {summary['pair_unit']} ("
        + ", ".join(f"{k} {v}" for k, v in e.items() if k not in ("samples", "pairs"))
        + ")"
        for name, e in summary["shards"].items()
    )
    return (
        f"lost {summary['lost_samples']} of {summary['total_samples']} training samples "
        f"({100 * summary['lost_fraction']:.2f}%) and {summary['lost_pairs']} of {summary['total_pairs']} "
        f"{summary['pair_unit']}; per shard: {shards}"
    )


def sum_skips(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Sum several `{kind: count}` dicts (e.g. the latest per worker, or per rank)."""
    total: dict[str, int] = {}
    for c in counts:
        for kind, n in c.items():
            total[kind] = total.get(kind, 0) + int(n)
    return total


class SkipTotals:
    """Trainer-side tally: feed it every batch, read `totals()` when logging.

    A batch carries the cumulative counts of its worker's current pass; this keeps the latest per worker.
    Call `end_epoch()` after each pass so that counts carry over when workers restart their pass.
    """

    def __init__(self) -> None:
        self._done: dict[str, int] = {}
        self._current: dict[int, dict[str, int]] = {}
        self.ledger: dict[str, dict] = {}

    def update(self, batch: Mapping) -> None:
        self._current[int(batch.get("worker_id", 0))] = dict(batch.get("skipped", {}))
        if batch.get("lost"):
            self.ledger = merge_ledgers([self.ledger, batch["lost"]])

    def end_epoch(self) -> None:
        self._done = sum_skips([self._done, *self._current.values()])
        self._current = {}

    def totals(self) -> dict[str, int]:
        """Counts over all finished passes plus the current one, summed over workers of this rank."""
        return sum_skips([self._done, *self._current.values()])
