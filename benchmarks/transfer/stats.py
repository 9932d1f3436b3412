"""Statistics over seeds: mean ± std per cell, paired differences with a 95% t-interval, the gap check.

A seed sets everything random in a run (the shared matrices' seed, the training seed, the data order), and every
variant runs at the same seeds, so two variants are compared seed by seed: the paired difference removes what
the seed does to both (a lucky data order) and is what the ablation steps report.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats as scipy_stats


@dataclass(frozen=True)
class Cell:
    """Mean ± sample std of one variant on one task over its seeds."""

    mean: float
    std: float
    n: int

    def text(self, digits: int) -> str:
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}" if self.n > 1 else f"{self.mean:.{digits}f}"


def cell(values: list[float]) -> Cell:
    return Cell(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))


@dataclass(frozen=True)
class Paired:
    """`to - from` over the seeds both have: mean, 95% t-interval (NaN below 2 seeds), the number of seeds."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.n > 1 and (self.lo > 0 or self.hi < 0)

    def text(self, digits: int) -> str:
        if self.n < 2:
            return f"{self.mean:+.{digits}f} (1 seed)"
        return f"{self.mean:+.{digits}f} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}]"


def paired(before: dict[int, float], after: dict[int, float], confidence: float = 0.95) -> Paired | None:
    """Paired difference after - before over the seeds in both (None when none is shared)."""
    seeds = sorted(set(before) & set(after))
    if not seeds:
        return None
    d = [after[s] - before[s] for s in seeds]
    mean = statistics.fmean(d)
    if len(d) < 2:
        return Paired(mean, math.nan, math.nan, 1)
    half = scipy_stats.t.ppf(0.5 + confidence / 2, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return Paired(mean, mean - half, mean + half, len(d))


@dataclass(frozen=True)
class GapCheck:
    """Issue 10's bar for a task: the frozen-to-full gap is at least `factor` times the larger seed std of full
    and unitrans, so that seed noise cannot hide a difference between methods the size of a fifth of the gap."""

    gap: float
    noise: float
    seeds: int = 5  # the fewer seeds of full and unitrans: one seed has no std to compare with
    factor: float = 5.0

    @property
    def ok(self) -> bool:
        return self.seeds > 1 and self.gap >= self.factor * self.noise

    def text(self, digits: int) -> str:
        if self.seeds < 2:
            return f"gap {self.gap:.{digits}f}; no seed std yet ({self.seeds} seed): not checked"
        verdict = "ok" if self.ok else "NOT MET"
        return f"gap {self.gap:.{digits}f} vs {self.factor:g} x std {self.noise:.{digits}f}: {verdict}"


def gap_check(frozen: Cell | None, full: Cell | None, unitrans: Cell | None) -> GapCheck | None:
    if frozen is None or full is None or unitrans is None:
        return None
    return GapCheck(full.mean - frozen.mean, max(full.std, unitrans.std), min(full.n, unitrans.n))
