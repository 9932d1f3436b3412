"""DiDeMo for paragraph-to-video retrieval: native `{annotation_id, description, video, times, ...}` records.

Every description of a video, in annotation order, is joined with spaces into ONE caption (the paragraph).
The 5-second segment `times` are checked for shape but not used: paragraph retrieval sees the whole clip.
"""

from __future__ import annotations

from pathlib import Path

from .records import ParseRequest, RecordReader, SourceItem, load_records, media_id, new_meta, sanitize_key


def parse_didemo(req: ParseRequest) -> list[SourceItem]:
    """One item per `video` (its file name under --media_root), caption = the joined paragraph."""
    path = Path(req.annotations) if req.annotations else None
    reader = RecordReader(path)
    paragraphs: dict[str, list[str]] = {}
    for i, rec in enumerate(reader.require_list(load_records(path, "annotations"))):
        reader.get(i, rec, "annotation_id", (int, str))
        video = reader.text(i, rec, "video")
        times = reader.get(i, rec, "times", (list,), optional=True)
        if times is not None and not all(isinstance(t, list) and len(t) == 2 for t in times):
            raise reader.fail(i, rec, "field 'times' must be a list of [start, end] segment pairs")
        paragraphs.setdefault(video, []).append(reader.text(i, rec, "description"))
    items = []
    for video, descriptions in paragraphs.items():
        sid = media_id(video)
        meta = new_meta(sid, "video", video, "didemo", req.split, sid)
        meta["captions"] = [" ".join(descriptions)]
        items.append(SourceItem(sanitize_key(sid), "video", video, meta))
    return items
