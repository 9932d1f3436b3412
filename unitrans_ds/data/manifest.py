"""Reading a shards folder's `manifest.json`: what the loaders need to size epochs and split shards.

The shard writer (`unitrans_ds.make_shards`) writes `manifest.json` next to `shard-000000.tar`, ... with the
sample, caption and question counts of each shard. The loaders never count by reading the tars: the manifest
is the source of truth for steps per epoch and for how many evaluation items each rank will see.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST_NAME = "manifest.json"
_HOW_TO_MAKE = "Write the shards with `python -m unitrans_ds.make_shards --help` (it writes manifest.json)."


@dataclass(frozen=True)
class ShardInfo:
    """One tar: its path and what it holds."""

    path: Path
    samples: int
    captions: int
    questions: int


@dataclass(frozen=True)
class Manifest:
    """The parsed manifest of one split's shards folder."""

    folder: Path
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


def _need(data: dict, key: str, where: Path) -> object:
    if key not in data:
        raise ValueError(f"{where}: key {key!r} is missing. {_HOW_TO_MAKE}")
    return data[key]


def read_manifest(folder: str | Path) -> Manifest:
    """Parse `<folder>/manifest.json`, checking that every listed shard exists and the totals add up.

    Raises FileNotFoundError / ValueError with a message naming the file and the fix.
    """
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise FileNotFoundError(f"Shards folder {folder} does not exist. {_HOW_TO_MAKE}")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the loaders read sample counts from it. Run "
            f"`python -m unitrans_ds.make_shards ... --out {folder}` to (re)write the shards and their manifest."
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exn:
        raise ValueError(f"{path} is not valid JSON ({exn}). {_HOW_TO_MAKE}") from exn
    shards = []
    for i, entry in enumerate(_need(data, "shards", path)):
        where = Path(f"{path} shards[{i}]")
        shard_path = folder / str(_need(entry, "name", where))
        if not shard_path.is_file():
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
