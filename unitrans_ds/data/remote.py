"""Where a split's shards live: a local folder, or a remote location read the way WebDataset reads shards.

`data.*_shards` may be
- a local folder;
- `http://` / `https://` URL of a folder: WebDataset streams the tars with `curl`, the manifest is fetched with
  fsspec;
- `s3://bucket/prefix`: through fsspec's s3fs, with the usual AWS settings (credentials, `AWS_ENDPOINT_URL` for an
  S3-compatible store); registered below as WebDataset's handler for `s3`, which it has none for;
- `pipe:COMMAND` with `{name}` where the file name goes (`pipe:aws s3 cp s3://b/train/{name} -`): the command's
  stdout is the file, as WebDataset's `pipe:` shards are.

`manifest.json` is read from the same place as the shards (`location_of(location, "manifest.json")`).
"""

from __future__ import annotations

import importlib
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

REMOTE_PREFIXES = ("http://", "https://", "s3://", "pipe:")
PIPE_EXAMPLE = "pipe:curl -s -f -L http://host/train/{name}"
# the module, not the function of the same name that the package exports
wds_gopen = importlib.import_module("webdataset.gopen")


def is_remote(location: str | Path) -> bool:
    return str(location).startswith(REMOTE_PREFIXES)


def location_of(location: str, name: str) -> str:
    """The location of the file `name` of a split at `location` (a URL of the folder or a pipe: template)."""
    if location.startswith("pipe:"):
        if "{name}" not in location:
            raise ValueError(
                f"{location!r}: a pipe: location needs {{name}} where the file name goes, e.g. {PIPE_EXAMPLE}"
            )
        return location.replace("{name}", name)
    return location.rstrip("/") + "/" + name


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def read_bytes(url: str, timeout: float = 120.0) -> bytes:
    """The whole (small) file at a remote `url`. Raises FileNotFoundError with one line saying why it failed."""
    if url.startswith("pipe:"):
        try:
            proc = subprocess.run(url[5:], shell=True, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise FileNotFoundError(f"{url}: the command did not finish in {timeout:.0f} s") from None
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            why = f": {err[-1]}" if err else ""
            raise FileNotFoundError(f"{url}: the command exited with status {proc.returncode}{why}")
        return proc.stdout
    import fsspec

    try:
        with fsspec.open(url, "rb") as f:
            return f.read()
    except FileNotFoundError as err:
        # fsspec's HTTP reports a refused connection as FileNotFoundError too; the cause tells them apart
        cause = err.__cause__
        if cause is None or isinstance(cause, FileNotFoundError) or getattr(cause, "status", None) == 404:
            raise FileNotFoundError(f"{url} does not exist") from None
        raise FileNotFoundError(f"cannot read {url} ({_one_line(cause)})") from None
    except Exception as err:  # network, credentials, DNS, missing s3fs: name it in one line
        raise FileNotFoundError(f"cannot read {url} ({_one_line(err)})") from None


def _gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **kw) -> IO[bytes]:  # noqa: ARG001 (gopen's)
    """WebDataset gopen handler for fsspec URLs (s3://): a readable stream of the object."""
    import fsspec

    return fsspec.open(url, mode).open()


# WebDataset's documented extension point: its scheme -> opener table (it has no s3 handler of its own).
wds_gopen.gopen_schemes.setdefault("s3", _gopen_fsspec)


@contextmanager
def open_tar(path: str | Path) -> Iterator[tarfile.TarFile]:
    """A shard as a `TarFile`: seekable for a local file, a forward-only stream for a remote one."""
    if not is_remote(path):
        with tarfile.open(path, mode="r:") as tar:
            yield tar
        return
    stream = wds_gopen.gopen(str(path), "rb")
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            yield tar
    finally:
        stream.close()
