"""Reading a shards folder's `manifest.json`: what the loaders need to size epochs and split shards.

The shard writer (`unitrans_ds.make_shards`) writes `manifest.json` next to `shard-000000.tar`, ... with the
sample, caption and question counts of each shard. The loaders never count by reading the tars: the manifest
is the source of truth for steps per epoch and for how many evaluation items each rank will see. Remote splits
(http(s)://, s3://, pipe:; see `remote`) keep their manifest.json beside the shards, read from the same place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .remote import is_remote, location_of, read_bytes

if TYPE_CHECKING:
    from ..config.schema import DataConfig

MANIFEST_NAME = "manifest.json"
_HOW_TO_MAKE = "Write the shards with `python -m unitrans_ds.make_shards --help` (it writes manifest.json)."


@dataclass(frozen=True)
class ShardInfo:
    """One tar: its path and what it holds."""

    path: Path | str  # a str URL for remote shards
    samples: int
    captions: int
    questions: int


@dataclass(frozen=True)
class Manifest:
    """The parsed manifest of one split's shards folder."""

    folder: Path | str  # a str URL for remote shards
    split: str
    tasks: list[str]
    total_samples: int
    num_captions: int
    num_questions: int
    frames: int | None
    shards: list[ShardInfo]
    skipped: object = None
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def is_video(self) -> bool:
        return self.frames is not None

    def num_items(self, unit: str) -> int:
        """Total of `unit` (`samples`, `captions` or `questions`) over all shards."""
        return sum(_count(s, unit) for s in self.shards)


def _count(shard: ShardInfo, unit: str) -> int:
    if unit not in ("samples", "captions", "questions"):
        raise ValueError(f"unit must be samples, captions or questions, got {unit!r}")
    return getattr(shard, unit)


def _need(data: dict, key: str, where: Path | str) -> object:
    if key not in data:
        raise ValueError(f"{where}: key {key!r} is missing. {_HOW_TO_MAKE}")
    return data[key]


def _read_local(folder: Path) -> tuple[Path, str]:
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise FileNotFoundError(f"Shards folder {folder} does not exist. {_HOW_TO_MAKE}")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the loaders read sample counts from it. Run "
            f"`python -m unitrans_ds.make_shards ... --out {folder}` to (re)write the shards and their manifest."
        )
    return path, path.read_text()


def _read_remote(location: str) -> tuple[str, str]:
    url = location_of(location, MANIFEST_NAME)
    try:
        return url, read_bytes(url).decode("utf-8")
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"the shards' manifest cannot be read: {err}. Check the location (it is the folder of the shards, "
            f"holding {MANIFEST_NAME}), the network and the credentials."
        ) from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{url} is not a UTF-8 manifest ({err}). {_HOW_TO_MAKE}") from None


def read_manifest(folder: str | Path) -> Manifest:
    """Parse the `manifest.json` of a shards folder or remote location (`data.remote`), checking that the totals
    add up and, for a local folder, that every listed shard exists.

    Raises FileNotFoundError / ValueError with a message naming the file and the fix.
    """
    remote = is_remote(folder)
    folder = str(folder) if remote else Path(folder)
    path, text = _read_remote(folder) if remote else _read_local(folder)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exn:
        raise ValueError(f"{path} is not valid JSON ({exn}). {_HOW_TO_MAKE}") from exn
    shards = []
    for i, entry in enumerate(_need(data, "shards", path)):
        where = f"{path} shards[{i}]"
        name = str(_need(entry, "name", where))
        shard_path = location_of(folder, name) if remote else folder / name
        # remote shards are not probed one by one here: WebDataset's reader reports and counts the ones that fail
        if not remote and not shard_path.is_file():
            raise FileNotFoundError(f"{path} lists {shard_path.name}, which is not in {folder}. {_HOW_TO_MAKE}")
        shards.append(
            ShardInfo(
                path=shard_path,
                samples=int(_need(entry, "samples", where)),
                captions=int(entry.get("captions", 0)),
                questions=int(entry.get("questions", 0)),
            )
        )
    if not shards:
        raise ValueError(f"{path} lists no shards. {_HOW_TO_MAKE}")
    manifest = Manifest(
        folder=folder,
        split=str(data.get("split", "")),
        tasks=list(data.get("tasks", [])),
        total_samples=int(_need(data, "total_samples", path)),
        num_captions=int(data.get("num_captions", 0)),
        num_questions=int(data.get("num_questions", 0)),
        frames=data.get("frames"),
        shards=shards,
        skipped=data.get("skipped"),
        raw=data,
    )
    for unit, total in (
        ("samples", manifest.total_samples),
        ("captions", manifest.num_captions),
        ("questions", manifest.num_questions),
    ):
        if manifest.num_items(unit) != total:
            raise ValueError(
                f"{path}: the shards' {unit} add up to {manifest.num_items(unit)} but the manifest total says "
                f"{total}; the folder is inconsistent. {_HOW_TO_MAKE}"
            )
    return manifest


SPLITS = ("train", "val", "test")


def read_split(key: str, location: str | Path | Manifest) -> Manifest:
    """A split's manifest for a run; any problem is one `ConfigError` line naming the config key `key`.

    A `Manifest` passes through unread: a run reads each split's manifest once (`read_splits`) and hands the
    objects on to its loaders, evaluations and tracking.
    """
    from ..config import ConfigError

    if isinstance(location, Manifest):
        return location
    if not is_remote(location) and not (Path(location) / MANIFEST_NAME).is_file():
        raise ConfigError(
            f"{key}: {location} holds no manifest.json; build the shards with "
            "`python -m unitrans_ds.make_shards ...` (see shards/README.md) or fix the path"
        )
    try:
        return read_manifest(location)
    except (OSError, ValueError) as err:  # 0 shards, a listed shard missing, totals that do not add up
        raise ConfigError(f"{key}: {err}") from None


def read_splits(data: DataConfig, given: dict[str, Manifest] | None = None) -> dict[str, Manifest]:
    """The manifests of the configured splits (`data.train_shards`, `val_shards`, `test_shards`; a null split is
    left out), read once: the splits in `given` are taken as they are."""
    given = given or {}
    out = {}
    for split in SPLITS:
        folder = getattr(data, f"{split}_shards")
        if folder:
            out[split] = given.get(split) or read_split(f"data.{split}_shards", folder)
    return out
