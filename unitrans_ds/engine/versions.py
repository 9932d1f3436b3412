"""What a run was made with: library versions and the git commit of this code, logged as MLflow tags.

Called once by rank 0 when a run starts. Nothing here may fail a run: a missing library or a checkout without git
gives `None`, never an exception.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

_PACKAGES = {"torch": "torch", "transformers": "transformers", "deepspeed": "deepspeed", "mlflow": "mlflow"}


def _version(dist_name: str) -> str | None:
    try:
        return metadata.version(dist_name)
    except metadata.PackageNotFoundError:
        return None


def collect_versions() -> dict[str, str | None]:
    """`{"python", "unitrans_ds", "torch", "transformers", "deepspeed", "mlflow"}` -> version strings (None if absent).

    Read from the installed distributions' metadata, so nothing heavy is imported.
    """
    from .. import __version__

    versions: dict[str, str | None] = {"python": platform.python_version(), "unitrans_ds": __version__}
    versions.update({key: _version(dist) for key, dist in _PACKAGES.items()})
    return versions


def _git(*args: str) -> str | None:
    # the package's own folder, so the answer is about this code, not about the caller's working directory
    where = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> str | None:
    """Full commit hash of the checkout this package lives in; None when it is not in a git work tree."""
    return _git("rev-parse", "HEAD")


def git_dirty() -> bool | None:
    """True when the checkout has uncommitted changes to tracked files; None outside git."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)
