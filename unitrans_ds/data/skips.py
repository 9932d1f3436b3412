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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping

logger = logging.getLogger(__name__)


class SkipCounter:
    """Per-worker skip counts by kind, logging at most one warning per `warn_interval` seconds per kind."""

    def __init__(self, warn_interval: float = 60.0, name: str = "loader") -> None:
        self.warn_interval = warn_interval
        self.name = name
        self.counts: dict[str, int] = {}
        self._last_warn: dict[str, float] = {}

    def reset(self) -> None:
        """Start a new pass (called when a worker starts iterating an epoch)."""
        self.counts = {}
        self._last_warn = {}

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

    def update(self, batch: Mapping) -> None:
        self._current[int(batch.get("worker_id", 0))] = dict(batch.get("skipped", {}))

    def end_epoch(self) -> None:
        self._done = sum_skips([self._done, *self._current.values()])
        self._current = {}

    def totals(self) -> dict[str, int]:
        """Counts over all finished passes plus the current one, summed over workers of this rank."""
        return sum_skips([self._done, *self._current.values()])
