"""Progress for people at a terminal and for log files alike.

At a terminal: a tqdm bar. Anywhere else (a log file, CI, a cluster's job output), `\\r`-redrawn bars turn into
hundreds of lines, so the same calls print one plain line every `interval_s` seconds and one when done:

    train: 12/30 steps (40%), 1.9 steps/s, elapsed 0:06, eta 0:09
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

LINE_INTERVAL_S = float(os.environ.get("UNITRANS_PROGRESS_INTERVAL_S", "10"))
_LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("progress_label", default="")


@contextlib.contextmanager
def labelled(label: str):
    """Every bar opened inside starts with `label`, e.g. the split an evaluation runs on (`test retrieval: ITM`)."""
    token = _LABEL.set(label)
    try:
        yield
    finally:
        _LABEL.reset(token)


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def is_terminal() -> bool:
    return sys.stderr.isatty()


class LineProgress:
    """tqdm's small interface (`update`, `close`, iteration, `write`) printing plain lines to stderr."""

    def __init__(
        self, iterable: Iterable | None, total: int | None, desc: str, unit: str, initial: int, interval_s: float
    ):
        self.iterable, self.desc, self.unit, self.interval_s = iterable, desc, unit, interval_s
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n = self.start_n = initial
        self.t0 = self.last = time.monotonic()
        self.closed = False
        self.printed_n: int | None = None

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __len__(self) -> int:
        return self.total or 0

    def line(self) -> str:
        elapsed = time.monotonic() - self.t0
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        done = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        if self.total:
            done += f" ({100 * self.n / self.total:.0f}%)"
        text = f"{self.desc}: {done}, {rate:.2f} {self.unit}/s, elapsed {_clock(elapsed)}"
        if self.total and rate > 0 and self.n < self.total:
            text += f", eta {_clock((self.total - self.n) / rate)}"
        return text

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            self.last = now
            self._print()

    def _print(self) -> None:
        self.printed_n = self.n
        print(self.line(), file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.printed_n != self.n:  # the last line already says where it ended
                self._print()

    @staticmethod
    def write(text: str) -> None:
        print(text, flush=True)


def progress(
    iterable: Iterable | None = None,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    enabled: bool = True,
    leave: bool = True,
) -> Any:
    """A tqdm bar at a terminal, a `LineProgress` elsewhere, a silent tqdm when not `enabled` (ranks other than 0)."""
    from tqdm import tqdm

    desc = f"{_LABEL.get()} {desc}".strip()
    if not enabled or is_terminal():
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=not enabled, leave=leave)
    return LineProgress(iterable, total, desc, unit, initial, LINE_INTERVAL_S)


def write(text: str) -> None:
    """Print a line without breaking a terminal bar."""
    if is_terminal():
        from tqdm import tqdm

        tqdm.write(text)
    else:
        print(text, flush=True)


def split_name(loader) -> str:
    """What an evaluation bar calls the split: the manifest's `split`, else the shards folder's name."""
    manifest = getattr(loader, "manifest", None)
    if manifest is None:
        return "eval"
    return manifest.split or os.path.basename(str(manifest.folder).rstrip("/"))
