"""`benchmarks/transfer/diagnose.py`: per attribute, what a model's outputs show it reads off the image."""

from __future__ import annotations

import json

from benchmarks.transfer.diagnose import caption_attributes, main, vqa_types


def test_caption_attributes_separate_a_seen_attribute_from_a_guessed_one():
    # four images; the model names every colour right and always says "circle", whatever the shape
    refs = {
        0: ["a red square on the left"],
        1: ["a blue circle at the top"],
        2: ["a green star on the right"],
        3: ["a yellow circle at the bottom"],
    }
    results = {0: "a red circle", 1: "a blue circle", 2: "a green circle", 3: "a yellow circle"}
    figures = caption_attributes(results, refs)
    assert figures["colour"]["precision"] == 100.0 and figures["colour"]["shuffled"] < 100.0
    assert figures["shape"]["precision"] == 50.0  # right on images 1 and 3 only: the guess's base rate
    assert figures["mark"]["n"] == 0 and figures["mark"]["precision"] is None


def meta(qid, qtype, answer):
    return {"questions": [{"question_id": qid, "question_type": qtype, "answers": [answer] * 10}]}


def test_vqa_types_show_a_type_answered_with_one_constant(tmp_path):
    metas = [meta(f"q{i}", "is there", "yes" if i % 2 else "no") for i in range(4)]
    metas += [meta(f"c{i}", "count", str(i)) for i in range(4)]
    answers = {f"q{i}": "yes" for i in range(4)} | {f"c{i}": str(i) for i in range(4)}
    figures = vqa_types(answers, metas)
    assert figures["is there"] == {"n": 4, "accuracy": 50.0, "constant": 50.0, "distinct": 1, "top_share": 100.0}
    assert figures["count"]["accuracy"] == 100.0 and figures["count"]["distinct"] == 4


def test_diagnose_of_missing_backbones_or_outputs_is_one_line(capsys, tmp_path):
    assert main(["--shards", str(tmp_path), "--pretrained", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == f"error: {tmp_path}/tiny-blip-captioning is not a save_pretrained folder; pass --pretrained or "
        "--captions DIR"
    )
    (tmp_path / "caption_results.json").write_text(json.dumps([{"image_id": 0, "caption": "a red circle"}]))
    assert main(["--shards", str(tmp_path), "--captions", str(tmp_path)]) == 2  # no references file
    assert capsys.readouterr().err.startswith("error: ")
