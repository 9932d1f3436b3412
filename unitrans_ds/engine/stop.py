"""Preemption: SIGTERM (or losing the `deepspeed` runner) stops every rank at the same step boundary.

How the signal reaches the ranks depends on who gets it:
- a rank (one or all): its handler sets a local flag;
- the `deepspeed.launcher.launch` process: it SIGTERMs the ranks one after the other, waiting up to 30 s for each
  to exit before signalling the next;
- the `deepspeed` runner: it installs no handler on one node and just dies, so the launcher and the ranks would
  train on as orphans. Each rank therefore notes its launcher and the launcher's parent at start, and treats
  "the launcher's parent changed" (the runner is gone) or "my parent changed" (the launcher is gone) as a SIGTERM.

A flag seen by one rank only must not make that rank save alone (the checkpoint is a collective: it would hang),
so the trainer all-reduces the flag at every step boundary (`agreed`) and all ranks stop on the same step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal

import torch

from ..collectives import any_rank

log = logging.getLogger("unitrans_ds.train")

#: exit status of a run stopped by SIGTERM: 128 + 15, what a shell reports for a process killed by SIGTERM, so
#: schedulers see a preemption, not success. (The `deepspeed` launcher itself exits 1 when it was the one signalled.)
EXIT_STOPPED = 128 + signal.SIGTERM


def _ppid_of(pid: int) -> int | None:
    """Parent pid of `pid` from /proc (Linux); None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class StopRequest:
    """Context manager: SIGTERM sets a flag; `agreed(device)` tells every rank whether any rank wants to stop."""

    def __init__(self) -> None:
        self.requested = False
        self.reason = ""
        self._old = None
        self._launcher: int | None = None
        self._runner: int | None = None

    def __enter__(self) -> StopRequest:
        with contextlib.suppress(ValueError):  # not the main thread
            self._old = signal.signal(signal.SIGTERM, self._handle)
        parent = os.getppid()
        if "deepspeed.launcher.launch" in _cmdline(parent):
            self._launcher, self._runner = parent, _ppid_of(parent)
        return self

    def _handle(self, _signum, _frame) -> None:  # the signal module's handler signature
        log.warning("SIGTERM received: all ranks will save a checkpoint and stop at the next step boundary")
        self.requested, self.reason = True, "SIGTERM"

    def _orphaned(self) -> bool:
        if self._launcher is None:
            return False
        if os.getppid() != self._launcher:
            return True
        return self._runner is not None and _ppid_of(self._launcher) not in (self._runner, None)

    def local(self) -> bool:
        """This rank's own view: a SIGTERM arrived, or the deepspeed launcher or runner went away."""
        if not self.requested and self._orphaned():
            log.warning("the deepspeed launcher or runner is gone: saving a checkpoint and stopping")
            self.requested, self.reason = True, "the deepspeed runner or launcher ended"
        return self.requested

    def agreed(self, device: torch.device) -> bool:
        """Collective (every rank, every step boundary): True on all ranks when any rank wants to stop."""
        stop = any_rank(self.local(), device)
        if stop and not self.requested:
            self.requested, self.reason = True, "another rank was asked to stop"
        return stop

    def __exit__(self, *exc) -> None:
        # After a stop the handler stays: the deepspeed launcher SIGTERMs the other ranks as soon as one exits,
        # and a rank still closing its tracker or printing how to resume must finish that (it exits 143 anyway).
        if self._old is not None and not self.requested:
            signal.signal(signal.SIGTERM, self._old)
