"""Image-caption formats: BLIP/LAVIS Karpathy JSONs (COCO, Flickr30K) and the official COCO captions JSON."""

from __future__ import annotations

from pathlib import Path

from .records import (
    AnnotationError,
    ParseRequest,
    RecordReader,
    SourceItem,
    load_records,
    media_id,
    new_meta,
    numeric_image_id,
    sanitize_key,
)


def parse_karpathy(req: ParseRequest, dataset: str) -> list[SourceItem]:
    """BLIP's Karpathy-split JSON: train rows `{image, caption, image_id}` (one per caption), val/test rows
    `{image, caption: [5 captions]}`. Rows of the same image merge into one item, captions in file order."""
    path = Path(req.annotations) if req.annotations else None
    data = load_records(path, "annotations")
    reader = RecordReader(path)
    items: dict[str, SourceItem] = {}
    for i, rec in enumerate(reader.require_list(data)):
        image = reader.text(i, rec, "image")
        captions = reader.texts(i, rec, "caption")
        given_id = reader.get(i, rec, "image_id", (str, int), optional=True)
        item = items.get(image)
        if item is None:
            sid = media_id(image)
            meta = new_meta(sid, "image", image, dataset, req.split, numeric_image_id(image, given_id))
            item = items[image] = SourceItem(sanitize_key(sid), "image", image, meta)
        item.meta["captions"].extend(captions)
    return list(items.values())


def parse_coco_captions(req: ParseRequest) -> list[SourceItem]:
    """Official COCO captions JSON (`images` + `annotations`). Paths are `file_name` under --media_root.

    Images without any caption still become items (an empty caption list), so nothing is dropped silently;
    an annotation whose `image_id` names no image is an error.
    """
    path = Path(req.annotations) if req.annotations else None
    data = load_records(path, "annotations")
    images = RecordReader(path, "images")
    anns = RecordReader(path, "annotations")
    by_id: dict[int, SourceItem] = {}
    for i, rec in enumerate(images.require_list(data, "images")):
        image_id = images.get(i, rec, "id", (int,))
        name = images.text(i, rec, "file_name")
        if image_id in by_id:
            raise images.fail(i, rec, f"duplicate image id {image_id}")
        sid = media_id(name)
        by_id[image_id] = SourceItem(
            sanitize_key(sid), "image", name, new_meta(sid, "image", name, "coco", req.split, image_id)
        )
    for i, rec in enumerate(anns.require_list(data, "annotations")):
        image_id = anns.get(i, rec, "image_id", (int,))
        if image_id not in by_id:
            raise anns.fail(i, rec, f"field 'image_id' = {image_id} names no entry of 'images'")
        by_id[image_id].meta["captions"].extend(anns.texts(i, rec, "caption"))
    if not by_id:
        raise AnnotationError(f"{path}: 'images' is empty")
    return list(by_id.values())
