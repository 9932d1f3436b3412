"""One spelling of command-line flags in every command, with the other one accepted.

DeepSpeed and HF users write flags with underscores (`deepspeed --master_port`, `--deepspeed_config`,
`--local_rank`, `--output_dir`), so every command of this project declares and documents them that way. Older
commands and habits use hyphens (`--ds-config`, `--media-root`): those keep working as aliases, without
showing up twice in `--help`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _canonical(token: str, known: set[str]) -> str:
    """`--media-root=x` -> `--media_root=x` when only the underscore spelling is a declared flag."""
    if not token.startswith("--") or token == "--":
        return token
    flag, eq, value = token.partition("=")
    if flag in known:
        return token
    alias = "--" + flag[2:].replace("-", "_")
    return alias + eq + value if alias in known else token


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` that also accepts the hyphenated spelling of every underscore flag."""

    def parse_known_args(self, args: Sequence[str] | None = None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        known = {s for a in self._actions for s in a.option_strings}
        end = args.index("--") if "--" in args else len(args)  # after `--` everything is positional
        args = [_canonical(a, known) for a in args[:end]] + args[end:]
        return super().parse_known_args(args, namespace)
