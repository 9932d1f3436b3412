"""MSR-VTT retrieval (native `train_val_videodatainfo.json`, or the 1k-A split jsonl of BLIP/ClipBERT) and
MSRVTT-QA (`{video_id, question, answer}` records). Videos are `<video_id>.mp4` under --media_root."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .records import AnnotationError, ParseRequest, RecordReader, SourceItem, load_records, new_meta, sanitize_key

# The native file names its validation split "validate".
_NATIVE_SPLIT = {"train": "train", "val": "validate", "test": "test"}


def _video_item(video_id: str, dataset: str, split: str) -> SourceItem:
    media = f"{video_id}.mp4"
    return SourceItem(
        sanitize_key(video_id), "video", media, new_meta(video_id, "video", media, dataset, split, video_id)
    )


def read_split_ids(path: Path) -> list[str]:
    """Video ids of a split file: one id per line, or jsonl rows with `clip_name`/`video_id`, or a JSON list."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: split file not found")
    text = path.read_text(encoding="utf-8").strip()
    if text.startswith("["):
        rows = load_records(path, "split-file")
    else:
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise AnnotationError(f"{path}: line {lineno} is not valid JSON ({e.msg})") from None
            else:
                rows.append(line)
    ids: list[str] = []
    for i, row in enumerate(rows):
        vid = row.get("clip_name", row.get("video_id")) if isinstance(row, dict) else row
        if not isinstance(vid, str):
            raise AnnotationError(f"{path}: entry {i} has no video id (a string, or 'clip_name' / 'video_id')")
        ids.append(vid)
    return list(dict.fromkeys(ids))


def parse_msrvtt(req: ParseRequest) -> list[SourceItem]:
    """Native JSON (`videos` + `sentences`), filtered by `--split_file` ids or else by each video's `split`;
    or split jsonl rows `{caption, clip_name, ...}` (one per caption, or `caption` as a list)."""
    path = Path(req.annotations) if req.annotations else None
    data = load_records(path, "annotations")
    if isinstance(data, dict) and "sentences" in data:
        return _parse_native(req, path, data)
    reader = RecordReader(path)
    rows = reader.require_list(data)
    items: dict[str, SourceItem] = {}
    for i, rec in enumerate(rows):
        vid = reader.text(i, rec, "clip_name")
        item = items.setdefault(vid, _video_item(vid, "msrvtt", req.split))
        item.meta["captions"].extend(reader.texts(i, rec, "caption"))
    return _filter_ids(list(items.values()), req)


def _parse_native(req: ParseRequest, path: Path, data: dict[str, Any]) -> list[SourceItem]:
    videos = RecordReader(path, "videos")
    sentences = RecordReader(path, "sentences")
    items: dict[str, SourceItem] = {}
    native_split = _NATIVE_SPLIT[req.split]
    for i, rec in enumerate(videos.require_list(data, "videos")):
        vid = videos.text(i, rec, "video_id")
        split = videos.get(i, rec, "split", (str,))
        if req.split_file is not None or split == native_split:
            items[vid] = _video_item(vid, "msrvtt", req.split)
    for i, rec in enumerate(sentences.require_list(data, "sentences")):
        vid = sentences.text(i, rec, "video_id")
        if vid in items:
            items[vid].meta["captions"].extend(sentences.texts(i, rec, "caption"))
    return _filter_ids(list(items.values()), req)


def _filter_ids(items: list[SourceItem], req: ParseRequest) -> list[SourceItem]:
    """Keep the `--split_file` ids, in the split file's order; an id without annotations is an error."""
    if req.split_file is None:
        return items
    by_id = {item.meta["id"]: item for item in items}
    missing = [vid for vid in read_split_ids(req.split_file) if vid not in by_id]
    if missing:
        raise AnnotationError(
            f"{req.split_file}: {len(missing)} video id(s) are not in {req.annotations} (first: {missing[0]!r})"
        )
    return [by_id[vid] for vid in read_split_ids(req.split_file)]


def parse_msrvtt_qa(req: ParseRequest) -> list[SourceItem]:
    """`{video_id, question, answer}` records (JSON list or jsonl). A numeric `video_id` (the original
    release) means `video<id>`. The question id is `question_id`, else `id`, else the record index."""
    path = Path(req.annotations) if req.annotations else None
    reader = RecordReader(path)
    items: dict[str, SourceItem] = {}
    for i, rec in enumerate(reader.require_list(load_records(path, "annotations"))):
        raw = reader.get(i, rec, "video_id", (str, int))
        vid = f"video{raw}" if isinstance(raw, int) else raw
        qid = reader.get(i, rec, "question_id", (int, str), optional=True)
        if qid is None:
            qid = reader.get(i, rec, "id", (int, str), optional=True)
        item = items.setdefault(vid, _video_item(vid, "msrvtt-qa", req.split))
        item.meta["questions"].append(
            {
                "question_id": i if qid is None else qid,
                "question": reader.text(i, rec, "question"),
                "answers": [reader.text(i, rec, "answer")],
                "answer_type": reader.get(i, rec, "answer_type", (str,), optional=True),
                "question_type": None,
            }
        )
    return list(items.values())
