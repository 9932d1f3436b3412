"""VQA v2: the official questions + annotations pair, or BLIP's `vqa_*.json` list.

One item per image carrying every question of that image; each question keeps all its answers (the 10 human
answers of VQA v2, in annotation order, repeats included, so the loader can compute soft scores).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def parse_vqav2(req: ParseRequest) -> list[SourceItem]:
    """Official pair when `--questions` is given (then `--annotations` is optional: test splits have none),
    otherwise BLIP's list format from `--annotations`."""
    if req.questions is not None:
        return _parse_official(req)
    data = load_records(Path(req.annotations) if req.annotations else None, "annotations")
    if isinstance(data, dict) and "annotations" in data:
        raise AnnotationError(
            f"{req.annotations}: this is an official VQA annotations file; pass the questions file with --questions"
        )
    return _parse_blip(req, data)


def _parse_official(req: ParseRequest) -> list[SourceItem]:
    qpath = Path(req.questions)
    qdata = load_records(qpath, "questions")
    qreader = RecordReader(qpath, "questions")
    questions = qreader.require_list(qdata, "questions")
    subtype = qdata.get("data_subtype")
    if not isinstance(subtype, str) or not subtype:
        raise AnnotationError(f"{qpath}: missing 'data_subtype' (e.g. \"val2014\"), needed to name the image files")
    answers = _official_answers(Path(req.annotations)) if req.annotations else None
    items: dict[Any, SourceItem] = {}
    for i, rec in enumerate(questions):
        image_id = qreader.get(i, rec, "image_id", (int,))
        qid = qreader.get(i, rec, "question_id", (int,))
        question = qreader.text(i, rec, "question")
        entry = {"question_id": qid, "question": question, "answers": [], "answer_type": None, "question_type": None}
        if answers is not None:
            if qid not in answers:
                raise qreader.fail(i, rec, f"question_id {qid} has no record in {req.annotations}")
            entry.update(answers[qid])
        item = items.get(image_id)
        if item is None:
            name = f"COCO_{subtype}_{image_id:012d}.jpg"
            media = f"{subtype}/{name}"
            meta = new_meta(media_id(name), "image", media, "vqav2", req.split, image_id)
            item = items[image_id] = SourceItem(sanitize_key(media_id(name)), "image", media, meta)
        item.meta["questions"].append(entry)
    return list(items.values())


def _official_answers(path: Path) -> dict[int, dict[str, Any]]:
    data = load_records(path, "annotations")
    reader = RecordReader(path, "annotations")
    out: dict[int, dict[str, Any]] = {}
    for i, rec in enumerate(reader.require_list(data, "annotations")):
        qid = reader.get(i, rec, "question_id", (int,))
        raw = reader.get(i, rec, "answers", (list,))
        answers = []
        for j, a in enumerate(raw):
            if not isinstance(a, dict) or not isinstance(a.get("answer"), str):
                raise reader.fail(i, rec, f"field 'answers[{j}]' must be an object with a string 'answer'")
            answers.append(a["answer"])
        out[qid] = {
            "answers": answers,
            "answer_type": reader.get(i, rec, "answer_type", (str,), optional=True),
            "question_type": reader.get(i, rec, "question_type", (str,), optional=True),
        }
    return out


def _parse_blip(req: ParseRequest, data: Any) -> list[SourceItem]:
    """`[{question_id, question, answer: [...], image, dataset}]`; test rows have no `answer`."""
    reader = RecordReader(Path(req.annotations))
    items: dict[str, SourceItem] = {}
    for i, rec in enumerate(reader.require_list(data)):
        image = reader.text(i, rec, "image")
        qid = reader.get(i, rec, "question_id", (int, str))
        raw = reader.get(i, rec, "answer", (list, str), optional=True)
        answers = [] if raw is None else reader.texts(i, rec, "answer")
        source = reader.get(i, rec, "dataset", (str,), optional=True)
        dataset = "vqav2" if source in (None, "vqa") else source
        item = items.get(image)
        if item is None:
            sid = media_id(image)
            meta = new_meta(sid, "image", image, dataset, req.split, numeric_image_id(image))
            item = items[image] = SourceItem(sanitize_key(sid), "image", image, meta)
        item.meta["questions"].append(
            {
                "question_id": qid,
                "question": reader.text(i, rec, "question"),
                "answers": answers,
                "answer_type": None,
                "question_type": None,
            }
        )
    return list(items.values())
