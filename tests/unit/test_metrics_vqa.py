"""Official VQA accuracy and normalization, worked by hand on real VQA v2 annotations (tests/fixtures/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unitrans_ds.metrics.vqa import (
    exact_match_accuracy,
    load_vqa_ground_truth,
    question_accuracy,
    vqa_accuracy,
    write_vqa_results,
)
from unitrans_ds.metrics.vqa_normalize import normalize_answer

FIXTURES = Path(__file__).parents[1] / "fixtures"
TRAIN_EXCERPT = FIXTURES / "vqav2_train_annotations_excerpt.json"
VAL_RECORD = FIXTURES / "v2_mscoco_val2014_annotations_record_262148000.json"


@pytest.fixture(scope="module")
def gt() -> dict:
    # Real answers (see the fixtures):
    # 458752000 "What is this photo taken looking through?": net x6, netting, mesh, pitcher, orange
    # 458752001 "What position is this man playing?": pitcher x9, catcher
    # 458752002 "What color is the players shirt?": orange x10
    # 262148000 "Where is he looking?" (val, answer_type other): down x7, at table, skateboard, table
    out = load_vqa_ground_truth(TRAIN_EXCERPT)
    out.update(load_vqa_ground_truth(VAL_RECORD))
    return out


def test_loader_reads_the_official_format(gt):
    assert sorted(gt) == [262148000, 458752000, 458752001, 458752002]
    assert gt[458752000]["answers"].count("net") == 6 and len(gt[458752000]["answers"]) == 10
    assert gt[458752000]["answer_type"] is None  # the train excerpt was trimmed to question_id + answers
    assert gt[262148000]["answer_type"] == "other"
    assert gt[262148000]["question_type"] == "none of the above"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("two", "2"),  # manualMap: number words to digits
        ("Ten.", "10"),  # lowercase first, period stripped, then the number word
        ("none", "0"),
        ("a dog", "dog"),  # articles dropped
        ("The Dog", "dog"),
        ("an apple", "apple"),
        ("dont", "don't"),  # contractions get their apostrophe
        ("I dont know", "i don't know"),
        ("whats", "what's"),
        ("what's", "what's"),  # the v2.0 tables do not treat the apostrophe as punctuation
        ("yes.", "yes"),  # periods not followed by a digit go
        ("3.5", "3.5"),  # ... a period before a digit stays
        ("1,000", "1000"),  # digit-comma-digit: every mark is deleted, not spaced
        ("black/white", "black white"),  # a mark with no space beside it becomes a space
        ("black / white", "black white"),  # a mark with a space beside it is deleted; split() eats the spaces
        ("yes, it is", "yes it is"),
        ("hello!", "hello"),
        ("\tYes\n", "yes"),  # newlines and tabs to spaces, then strip
        ("Im", "im"),  # official quirk: the table's key is "Im", which never matches after lowercasing
    ],
)
def test_normalize_answer_official_rules(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    ("qid", "prediction", "expected_pct"),
    [
        # net x6: leaving out a "net" leaves 5 matches -> min(1, 5/3) = 1; leaving out another answer leaves 6 -> 1.
        # Mean of ten 1s = 100.
        (458752000, "net", 100.0),
        # "The net." -> punctuation: period stripped -> "The net" -> lowercase, drop "the" -> "net": 100.
        (458752000, "The net.", 100.0),
        # mesh x1: leaving out the "mesh" leaves 0 -> 0; the 9 other subsets hold it once -> 1/3.
        # (0 + 9 * 1/3) / 10 = 0.3 -> 30.
        (458752000, "mesh", 30.0),
        # "netting!" -> "!" has no space beside it, so it becomes a space -> "netting " -> "netting": 30.
        (458752000, "netting!", 30.0),
        (458752000, "basket", 0.0),
        # pitcher x9: leaving out a pitcher leaves 8, out the catcher leaves 9 -> all 1 -> 100.
        (458752001, "pitcher", 100.0),
        # The answers differ, so the prediction is normalized: "A Catcher" -> "catcher", once -> 30.
        (458752001, "A Catcher", 30.0),
        # orange x10: every subset holds 9 matches -> 100.
        (458752002, "orange", 100.0),
        (458752002, " orange\n", 100.0),  # whitespace is always cleaned
        # lavis-2017 always normalizes the prediction: "Orange" -> "orange", 10 matches -> 100 (official-2021: 0,
        # see test_the_two_evaluator_releases_disagree_on_real_records).
        (458752002, "Orange", 100.0),
        # down x7: 100. "Down." -> normalized (answers differ) -> "down" -> 100.
        (262148000, "Down.", 100.0),
        # "at the table" -> drop "the" -> "at table", which one annotator gave: 30.
        (262148000, "at the table", 30.0),
        # "the table" -> "table", also given once: 30.
        (262148000, "the table", 30.0),
    ],
)
def test_question_accuracy_worked_by_hand(gt, qid, prediction, expected_pct):
    assert 100.0 * question_accuracy(prediction, gt[qid]["answers"]) == pytest.approx(expected_pct)


@pytest.mark.parametrize(
    ("qid", "prediction", "lavis_2017", "official_2021"),
    [
        # Ten identical "orange": 2021 normalizes nothing, so "Orange" and "orange." miss; 2017 always normalizes
        # the prediction, so both become "orange" and hit.
        (458752002, "Orange", 100.0, 0.0),
        (458752002, "orange.", 100.0, 0.0),
        # The answers differ: both normalize the prediction and agree.
        (458752000, "The Net", 100.0, 100.0),
        (262148000, "at the table", 30.0, 30.0),
    ],
)
def test_the_two_evaluator_releases_disagree_on_real_records(gt, qid, prediction, lavis_2017, official_2021):
    answers = gt[qid]["answers"]
    assert 100.0 * question_accuracy(prediction, answers, "lavis-2017") == pytest.approx(lavis_2017)
    assert 100.0 * question_accuracy(prediction, answers, "official-2021") == pytest.approx(official_2021)
    preds = {qid: prediction}
    assert vqa_accuracy(preds, gt)["overall"] == pytest.approx(lavis_2017)  # the default is lavis-2017
    assert vqa_accuracy(preds, gt, "official-2021")["overall"] == pytest.approx(official_2021)


def test_unknown_evaluator_is_named():
    with pytest.raises(ValueError, match="eval.vqa_evaluator must be one of lavis-2017, official-2021"):
        question_accuracy("yes", ["yes"] * 10, "vqa-2015")


def test_two_and_three_matches_follow_the_leave_one_out_average():
    # Built on the real answers of 262148000 with some "down" answers relabelled, to reach 2 and 3 matches.
    # 2 matches: the 2 subsets without one of them hold 1 -> 1/3; the other 8 hold 2 -> 2/3.
    # (2/3 + 16/3) / 10 = 0.6 -> 60.
    answers = ["down", "down", "at table", "skateboard", "up", "table", "up", "up", "up", "up"]
    assert 100.0 * question_accuracy("down", answers) == pytest.approx(60.0)
    # 3 matches: the 3 subsets without one hold 2 -> 2/3; the other 7 hold 3 -> 1. (2 + 7) / 10 = 0.9 -> 90.
    answers = ["down", "down", "at table", "skateboard", "down", "table", "up", "up", "up", "up"]
    assert 100.0 * question_accuracy("down", answers) == pytest.approx(90.0)


def test_vqa_accuracy_overall_and_per_answer_type(gt):
    preds = [
        {"question_id": 458752000, "answer": "mesh"},  # 30
        {"question_id": 458752001, "answer": "pitcher"},  # 100
        {"question_id": 458752002, "answer": "orange"},  # 100
        {"question_id": 262148000, "answer": "at the table"},  # 30
    ]
    out = vqa_accuracy(preds, gt)
    # (30 + 100 + 100 + 30) / 4 = 65. Only 262148000 carries an answer type ("other"): 30.
    assert out["overall"] == pytest.approx(65.0)
    assert out["per_answer_type"] == pytest.approx({"other": 30.0})
    assert out["per_question_type"] == pytest.approx({"none of the above": 30.0})
    assert out["per_question"][458752000] == pytest.approx(30.0)
    assert out["n_questions"] == 4 and out["n_unanswered"] == 0
    # The dict form of the same predictions scores the same.
    assert vqa_accuracy({p["question_id"]: p["answer"] for p in preds}, gt)["overall"] == pytest.approx(65.0)


def test_unanswered_questions_are_counted(gt):
    out = vqa_accuracy({458752001: "pitcher"}, gt)
    assert out["overall"] == pytest.approx(100.0)
    assert out["n_unanswered"] == 3


def test_vqa_errors_are_clear(gt):
    with pytest.raises(ValueError, match="No ground truth for 1 predicted question"):
        vqa_accuracy({999: "yes"}, gt)
    with pytest.raises(ValueError, match="ground-truth ids are int"):
        vqa_accuracy({"458752000": "net"}, gt)
    with pytest.raises(ValueError, match="test-dev/test"):
        vqa_accuracy({1: "yes"}, {})
    with pytest.raises(ValueError, match="test-dev/test"):
        vqa_accuracy({1: "yes"}, {1: {"answers": [], "answer_type": None}})
    with pytest.raises(ValueError, match="answered twice"):
        vqa_accuracy([{"question_id": 458752000, "answer": "a"}, {"question_id": 458752000, "answer": "b"}], gt)


def test_exact_match_accuracy_normalizes_both_sides():
    # MSRVTT-QA style, one answer per question.
    # 1: "Two dogs." -> "two dogs" -> "2 dogs" == "2 dogs": hit. 2: "a cat" -> "cat" != "dog": miss.
    # 3: "The Man" -> "man" == "man": hit. Accuracy 2/3.
    out = exact_match_accuracy(
        {1: "Two dogs.", 2: "a cat", 3: "The Man"}, {1: "2 dogs", 2: "dog", 3: {"answer": "man"}}
    )
    assert out["overall"] == pytest.approx(200.0 / 3)
    assert out["per_question"] == {1: 100.0, 2: 0.0, 3: 100.0}
    with pytest.raises(ValueError, match="No ground truth"):
        exact_match_accuracy({4: "x"}, {1: "2 dogs"})


def test_write_vqa_results_round_trip(tmp_path, gt):
    path = write_vqa_results(tmp_path / "sub" / "vqa_result.json", {458752000: "net", "458752001": "pitcher"})
    records = json.loads(path.read_text())
    assert records == [{"question_id": 458752000, "answer": "net"}, {"question_id": 458752001, "answer": "pitcher"}]
    assert vqa_accuracy(records, gt)["overall"] == pytest.approx(100.0)


def _official_accuracy(res_ans: str, answers: list[str], release: str) -> float:
    """A line-by-line transcription of `evaluate` for one question, `processPunctuation` and `processDigitArticle`
    of two releases of the official vqaEval.py, used as an independent reference for `question_accuracy`:
    `official-2021` = GT-Vision-Lab/VQA @ a013f004; `lavis-2017` = the v2.0 release as salesforce/LAVIS ships it
    (lavis/common/vqa_tools/vqa_eval.py), which differs only in `evaluate`."""
    import re

    tables = json.loads((Path(__file__).parents[2] / "unitrans_ds/assets/vqa_normalization_tables.json").read_text())
    contractions, manual_map, articles, punct = (
        tables["contractions"],
        dict(tables["manualMap"]),
        tables["articles"],
        tables["punct"],
    )
    period_strip = re.compile(r"(?!<=\d)(\.)(?!\d)")
    comma_strip = re.compile(r"(\d)(\,)(\d)")

    def process_punctuation(in_text):
        out_text = in_text
        for p in punct:
            if (p + " " in in_text or " " + p in in_text) or (re.search(comma_strip, in_text) is not None):
                out_text = out_text.replace(p, "")
            else:
                out_text = out_text.replace(p, " ")
        return period_strip.sub("", out_text, re.UNICODE)

    def process_digit_article(in_text):
        out_text = []
        for word in in_text.lower().split():
            word = manual_map.setdefault(word, word)
            if word not in articles:
                out_text.append(word)
        for word_id, word in enumerate(out_text):
            if word in contractions:
                out_text[word_id] = contractions[word]
        return " ".join(out_text)

    gts = [{"answer": a, "answer_id": i} for i, a in enumerate(answers)]
    if release == "official-2021":
        for d in gts:
            d["answer"] = d["answer"].replace("\n", " ").replace("\t", " ").strip()
        res_ans = res_ans.replace("\n", " ").replace("\t", " ").strip()
        if len({d["answer"] for d in gts}) > 1:
            for d in gts:
                d["answer"] = process_digit_article(process_punctuation(d["answer"]))
            res_ans = process_digit_article(process_punctuation(res_ans))
    else:
        res_ans = res_ans.replace("\n", " ").replace("\t", " ").strip()
        res_ans = process_digit_article(process_punctuation(res_ans))
        if len({d["answer"] for d in gts}) > 1:
            for d in gts:
                d["answer"] = process_punctuation(d["answer"])
    accs = []
    for g in gts:
        other = [item for item in gts if item != g]
        accs.append(min(1, len([item for item in other if item["answer"] == res_ans]) / 3))
    return sum(accs) / len(accs)


@pytest.mark.parametrize("release", ["lavis-2017", "official-2021"])
def test_agrees_with_a_transcription_of_the_official_evaluator(release):
    import random

    rng = random.Random(0)
    vocab = [
        "two",
        "2",
        "Two.",
        "a dog",
        "dog",
        "the dog!",
        "dont",
        "don't",
        "1,000",
        "1000",
        "yes",
        "Yes.",
        "black/white",
        "black white",
        "3.5",
        "none",
        "0",
        "red, blue",
        "red blue",
        " Net\t",
        "net",
        "orange",
    ]
    nonzero = 0
    for _ in range(2000):
        pool = rng.sample(vocab, rng.randint(1, 4))
        answers = [rng.choice(pool) for _ in range(10)]
        pred = rng.choice(vocab)
        expected = _official_accuracy(pred, answers, release)
        assert question_accuracy(pred, answers, release) == pytest.approx(expected, abs=1e-12), (pred, answers)
        nonzero += expected > 0
    assert nonzero > 200  # the random cases do exercise matches, not only zeros
