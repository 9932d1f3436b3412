"""The dry run of a paper config on its real architecture (random weights, a handful of native samples)."""

from .run import dry_run

__all__ = ["dry_run"]
