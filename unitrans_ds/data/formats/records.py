"""What every annotation parser returns, the errors it raises, and the checks it shares.

A parser turns one native annotation file into a list of `SourceItem`s, one per image or video, in a
deterministic order (the order of first appearance in the file). `shard_writer` converts each item into one
WebDataset sample. Parsers never touch the media; a missing image is the converter's (counted) skip.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_COCO_NAME = re.compile(r"COCO_[a-z]+\d{4}_(\d+)$")


class ShardError(ValueError):
    """A problem with make_shards' input or output folder, worded for the person running it."""


class AnnotationError(ShardError):
    """A malformed annotation file: the message names the file, the record and the bad field."""


@dataclass
class ParseRequest:
    """The inputs a parser may read. Paths are as the user gave them; `split` is train, val or test."""

    split: str
    annotations: Path | None = None
    questions: Path | None = None
    split_file: Path | None = None
    domain: str | None = None
    seed: int = 0
    num_samples: int | None = None
    task_set: str = "image"
    image_size: int = 64
    frames: int = 16


@dataclass
class SourceItem:
    """One future sample.

    `key` is the WebDataset key (no dots). `kind` is "image" or "video". `media` is the path relative to
    `--media_root` (None for synthetic items, which carry a `scene` to render instead). `meta` is the sample's
    `json` before the converter adds the media fields (video size, frame times).
    """

    key: str
    kind: str
    media: str | None
    meta: dict[str, Any]
    scene: dict[str, Any] | None = field(default=None)


def sanitize_key(raw: str) -> str:
    """A WebDataset key for `raw`: characters other than letters, digits, `_` and `-` become `_`.

    WebDataset splits a member name at the first dot, so a dot inside a key would corrupt the sample.
    """
    return _KEY_UNSAFE.sub("_", raw) or "_"


def assign_unique_keys(items: list[SourceItem]) -> None:
    """Make keys unique in place: a key seen before gets `-2`, `-3`, ... in item order (deterministic)."""
    seen: dict[str, int] = {}
    for item in items:
        base = item.key
        if base in seen:
            seen[base] += 1
            item.key = f"{base}-{seen[base]}"
            while item.key in seen:
                seen[base] += 1
                item.key = f"{base}-{seen[base]}"
        seen.setdefault(item.key, 1)


def load_records(path: Path | None, what: str) -> Any:
    """Parse a JSON file, or a JSON-lines file (one object per line) when the name ends in `.jsonl`.

    Raises `AnnotationError` naming the file (and line) when it is missing or not valid JSON.
    """
    if path is None:
        raise AnnotationError(f"--{what} is required for this format")
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: {what} file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise AnnotationError(f"{path}: line {lineno} is not valid JSON ({e.msg})") from None
        return rows
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not valid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None


class RecordReader:
    """Field access with errors that name the file, the record (index and id) and the field."""

    def __init__(self, path: Path, list_name: str | None = None):
        self.path = path
        self.list_name = list_name

    def where(self, index: int, record: Any) -> str:
        ident = ""
        if isinstance(record, dict):
            for id_field in ("id", "question_id", "annotation_id", "video_id", "clip_name", "image", "image_id"):
                if id_field in record:
                    ident = f" ({id_field}={record[id_field]!r})"
                    break
        inside = f"{self.list_name}[{index}]" if self.list_name else f"record {index}"
        return f"{self.path}: {inside}{ident}"

    def fail(self, index: int, record: Any, message: str) -> AnnotationError:
        return AnnotationError(f"{self.where(index, record)}: {message}")

    def require_list(self, data: Any, key: str | None = None) -> list:
        """`data` (or `data[key]`) must be a list of records."""
        if key is not None:
            if not isinstance(data, dict) or key not in data:
                raise AnnotationError(f"{self.path}: expected a JSON object with a '{key}' list")
            data = data[key]
        if not isinstance(data, list):
            where = f"'{key}'" if key else "the top level"
            raise AnnotationError(f"{self.path}: {where} must be a list of records, got {type(data).__name__}")
        return data

    def get(self, index: int, record: Any, name: str, types: tuple[type, ...], optional: bool = False) -> Any:
        """`record[name]`, checked against `types` (bool is never accepted as an int)."""
        if not isinstance(record, dict):
            raise self.fail(index, record, f"expected a JSON object, got {type(record).__name__}")
        if name not in record or record[name] is None:
            if optional:
                return None
            raise self.fail(index, record, f"missing field '{name}'")
        value = record[name]
        if isinstance(value, bool) or not isinstance(value, types):
            wanted = " or ".join(t.__name__ for t in types)
            raise self.fail(index, record, f"field '{name}' must be {wanted}, got {type(value).__name__} {value!r:.60}")
        return value

    def text(self, index: int, record: Any, name: str) -> str:
        """A non-empty string field, whitespace collapsed (real files carry stray newlines)."""
        value = " ".join(self.get(index, record, name, (str,)).split())
        if not value:
            raise self.fail(index, record, f"field '{name}' is empty")
        return value

    def texts(self, index: int, record: Any, name: str) -> list[str]:
        """A string or a list of strings (Karpathy val/test rows carry 5 captions)."""
        value = self.get(index, record, name, (str, list))
        values = [value] if isinstance(value, str) else value
        out = []
        for j, v in enumerate(values):
            if not isinstance(v, str):
                raise self.fail(index, record, f"field '{name}[{j}]' must be str, got {type(v).__name__}")
            if " ".join(v.split()):
                out.append(" ".join(v.split()))
        if not out:
            raise self.fail(index, record, f"field '{name}' holds no non-empty text")
        return out


def numeric_image_id(image_path: str, given: Any = None) -> int | str:
    """The data set's own image id: COCO's number when the path or a `coco_123` id reveals it.

    Falls back to `given` (as an int when it is all digits), then to the file stem.
    """
    stem = Path(image_path).stem
    m = _COCO_NAME.search(stem)
    if m:
        return int(m.group(1))
    if given is not None:
        text = str(given)
        if text.startswith("coco_"):
            text = text[len("coco_") :]
        return int(text) if text.isdigit() else given
    return int(stem) if stem.isdigit() else stem


def media_id(path: str) -> str:
    """The sample id for a media path: its file name without the extension."""
    return Path(path).stem or path


def new_meta(
    sample_id: str, media_field: str, media: str, dataset: str, split: str, image_id: Any, domain: str | None = None
) -> dict[str, Any]:
    """The `json` fields every sample carries, in schema order (captions and questions start empty)."""
    return {
        "id": sample_id,
        media_field: media,
        "dataset": dataset,
        "split": split,
        "domain": domain,
        "captions": [],
        "questions": [],
        "image_id": image_id,
    }
