"""`benchmarks/transfer/diagnose.py`: per attribute, what a model's outputs show it reads off the image."""

from __future__ import annotations

import json

from benchmarks.transfer.diagnose import caption_attributes, main, retrieval_kinds, vqa_types


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


def test_retrieval_kinds_split_text_to_image_by_caption_kind(tmp_path, capsys):
    # two images of four captions each (the grammar's order); k = 2 candidates per caption
    texts = [{"index": t, "image": t // 4, "text": f"caption {t}"} for t in range(8)]
    index = {"images": [{"index": 0}, {"index": 1}], "texts": texts}
    t2i = [
        {"query": 0, "images": [0, 1]},  # listing, image 0: first
        {"query": 1, "images": [1, 0]},  # positions: a candidate, not first
        {"query": 2, "images": [1]},  # one relation: not among the candidates
        {"query": 3, "images": [0, 1]},
        {"query": 4, "images": [1, 0]},  # listing, image 1: first
        {"query": 5, "images": [1, 0]},  # positions: first
        {"query": 6, "images": [0]},  # one relation: missed
        {"query": 7, "images": [0, 1]},  # second relation: a candidate, not first
    ]
    figures = retrieval_kinds(index, t2i)
    assert figures["count and listing"] == {"n": 2, "r1": 100.0, "in_candidates": 100.0, "k": 2}
    assert figures["three positions"]["r1"] == 50.0 and figures["three positions"]["in_candidates"] == 100.0
    assert figures["one relation"]["r1"] == 0.0 and figures["one relation"]["in_candidates"] == 0.0
    assert figures["second relation"]["r1"] == 50.0 and figures["second relation"]["in_candidates"] == 100.0
    # through the command, from the files an evaluation writes
    (tmp_path / "retrieval_index.json").write_text(json.dumps(index))
    (tmp_path / "t2i_topk.jsonl").write_text("".join(json.dumps(r) + "\n" for r in t2i))
    assert main(["--retrieval", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| one relation | 2 | 0.0 | 0.0 |" in out and "image among the 2 candidates" in out
    # a split whose images carry more captions than the grammar writes is not a scenes split: one line
    bad = {"images": [{"index": 0}], "texts": [{"index": t, "image": 0, "text": "x"} for t in range(5)]}
    (tmp_path / "retrieval_index.json").write_text(json.dumps(bad))
    assert main(["--retrieval", str(tmp_path)]) == 2
    assert "more than 4 captions" in capsys.readouterr().err
