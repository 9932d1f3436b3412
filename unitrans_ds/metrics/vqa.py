"""VQA accuracy as the official evaluator computes it, MSRVTT-QA exact match, and the results file for the server.

The VQA task's evaluation calls `vqa_accuracy` (or `exact_match_accuracy` for MSRVTT-QA) with the answers it
predicted and the ground truth of the split, and `write_vqa_results` for splits without answers (test-dev, test),
whose results go to the official EvalAI server.

Official accuracy of one question with ten human answers: for each of the ten leave-one-out subsets of nine,
acc = min(1, (#answers in the subset equal to the prediction) / 3); the question scores the mean of the ten.
Answers are compared after the official normalization (`vqa_normalize`). Two releases of the official
`vqaEval.py` differ in what they normalize, and both are here (`eval.vqa_evaluator`):

- `lavis-2017` (default): the v2.0 release (2017) that LAVIS ships as `lavis/common/vqa_tools/vqa_eval.py` and
  that produced the published BLIP/UniAdapter numbers. The prediction is always fully normalized (whitespace,
  punctuation, then digits/articles/contractions); the ground-truth answers are taken raw, and get punctuation
  processing only, only when they are not all the same string.
- `official-2021`: the 2021 GT-Vision-Lab update. The ground-truth answers are whitespace-cleaned; then, only
  when they are not all the same string, both they and the prediction are fully normalized.

Where they disagree, on real VQA v2 records (tests/unit/test_metrics_vqa.py): ten "orange" answers (train question
458752002) and the prediction "Orange" score 100 with `lavis-2017` (the prediction is normalized to "orange") and
0 with `official-2021` (the answers are identical, so nothing is normalized). Ground truths holding number words
or articles ("two", "a dog") match a prediction "2" / "dog" only under `official-2021`, which also normalizes
the answers.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .vqa_normalize import clean_whitespace, normalize_answer, process_digit_article, process_punctuation

logger = logging.getLogger(__name__)

QuestionId = int | str
PredictionsLike = Mapping[Any, str] | Sequence[Mapping[str, Any]]

_NO_GT_HINT = (
    "VQA v2 test-dev/test splits carry no answers: write the predictions with `write_vqa_results` and submit "
    "them to the official EvalAI server instead of scoring them locally."
)


def predictions_to_dict(predictions: PredictionsLike) -> dict[Any, str]:
    """{question_id: answer} from either that dict or a list of {"question_id", "answer"} records.

    A question answered twice is an error (a distributed gather that duplicated samples, usually).
    """
    if isinstance(predictions, Mapping):
        return {qid: str(ans) for qid, ans in predictions.items()}
    out: dict[Any, str] = {}
    for i, rec in enumerate(predictions):
        if not isinstance(rec, Mapping) or "question_id" not in rec or "answer" not in rec:
            raise ValueError(f"Prediction #{i} must be a mapping with 'question_id' and 'answer'; got {rec!r}.")
        qid = rec["question_id"]
        if qid in out:
            raise ValueError(
                f"Question {qid!r} is answered twice in the predictions ({out[qid]!r} and {rec['answer']!r}); "
                "deduplicate by question_id (samples repeated across ranks?)."
            )
        out[qid] = str(rec["answer"])
    return out


def _answer_strings(qid: Any, entry: Any) -> list[str]:
    answers = entry.get("answers") if isinstance(entry, Mapping) else None
    if answers is None:
        raise ValueError(f"Ground truth of question {qid!r} has no 'answers' list: {entry!r}.")
    # Official annotation records hold {"answer", "answer_confidence", "answer_id"}; accept them as they are.
    return [a["answer"] if isinstance(a, Mapping) else a for a in answers]


def _missing_gt_error(missing: list[Any], ground_truth: Mapping[Any, Any]) -> ValueError:
    sample_gt = next(iter(ground_truth))
    hint = ""
    if type(missing[0]) is not type(sample_gt):
        hint = (
            f" The prediction ids are {type(missing[0]).__name__} but the ground-truth ids are "
            f"{type(sample_gt).__name__} (a JSON round trip turns dict keys into strings)."
        )
    return ValueError(
        f"No ground truth for {len(missing)} predicted question(s), e.g. {missing[:5]}; predictions must come from "
        f"the same split as the ground truth.{hint}"
    )


#: `eval.vqa_evaluator` values: the official evaluator releases this module reproduces (module docstring).
VQA_EVALUATORS = ("lavis-2017", "official-2021")


def question_accuracy(prediction: str, answers: Sequence[str], evaluator: str = "lavis-2017") -> float:
    """Official accuracy of one prediction against its human answers, in [0, 1], as the `evaluator` release
    computes it (`lavis-2017` or `official-2021`, see the module docstring)."""
    if evaluator == "lavis-2017":
        res = process_digit_article(process_punctuation(clean_whitespace(prediction)))
        gts = list(answers)
        if len(set(gts)) > 1:
            gts = [process_punctuation(a) for a in gts]
    elif evaluator == "official-2021":
        gts = [clean_whitespace(a) for a in answers]
        res = clean_whitespace(prediction)
        if len(set(gts)) > 1:
            gts = [process_digit_article(process_punctuation(a)) for a in gts]
            res = process_digit_article(process_punctuation(res))
    else:
        raise ValueError(f"eval.vqa_evaluator must be one of {', '.join(VQA_EVALUATORS)}, got {evaluator!r}")
    matches = sum(a == res for a in gts)
    # Leaving answer j out removes one match exactly when answer j itself matches.
    return sum(min(1.0, (matches - (a == res)) / 3.0) for a in gts) / len(gts)


def _mean_pct(values: list[float]) -> float:
    return 100.0 * sum(values) / len(values)


def vqa_accuracy(
    predictions: PredictionsLike, ground_truth: Mapping[Any, Mapping[str, Any]], evaluator: str = "lavis-2017"
) -> dict[str, Any]:
    """Official VQA accuracy of `predictions` against `ground_truth`, in percent (not rounded), as the
    `evaluator` release computes it (`lavis-2017`, the default, or `official-2021`).

    predictions: {question_id: answer} or [{"question_id", "answer"}]. ground_truth: {question_id: {"answers":
    [10 str] (or official answer records), "answer_type": str | None, optional "question_type"}}. Every
    prediction needs ground truth; questions of the ground truth without a prediction are left out and counted in
    `n_unanswered` (with a warning). Returns overall, per_answer_type (types that are not None),
    per_question_type (when given), per_question ({question_id: percent}), n_questions, n_unanswered.
    """
    preds = predictions_to_dict(predictions)
    if not ground_truth or all(not _answer_strings(q, e) for q, e in ground_truth.items()):
        raise ValueError(f"The ground truth holds no answers at all. {_NO_GT_HINT}")
    if not preds:
        raise ValueError("No predictions to score.")
    missing = [qid for qid in preds if qid not in ground_truth]
    if missing:
        raise _missing_gt_error(missing, ground_truth)

    per_question: dict[Any, float] = {}
    by_answer_type: dict[str, list[float]] = defaultdict(list)
    by_question_type: dict[str, list[float]] = defaultdict(list)
    for qid, answer in preds.items():
        entry = ground_truth[qid]
        answers = _answer_strings(qid, entry)
        if not answers:
            raise ValueError(f"Question {qid!r} has an empty answer list in the ground truth. {_NO_GT_HINT}")
        acc = question_accuracy(answer, answers, evaluator)
        per_question[qid] = 100.0 * acc
        if entry.get("answer_type") is not None:
            by_answer_type[entry["answer_type"]].append(acc)
        if entry.get("question_type") is not None:
            by_question_type[entry["question_type"]].append(acc)

    n_unanswered = len(ground_truth) - len(preds)
    if n_unanswered:
        logger.warning("VQA accuracy: %d ground-truth question(s) have no prediction and are left out.", n_unanswered)
    return {
        "overall": sum(per_question.values()) / len(per_question),
        "per_answer_type": {k: _mean_pct(v) for k, v in sorted(by_answer_type.items())},
        "per_question_type": {k: _mean_pct(v) for k, v in sorted(by_question_type.items())},
        "per_question": per_question,
        "n_questions": len(per_question),
        "n_unanswered": n_unanswered,
    }


def exact_match_accuracy(predictions: PredictionsLike, ground_truth: Mapping[Any, Any]) -> dict[str, Any]:
    """MSRVTT-QA accuracy: percent of questions whose normalized prediction equals the normalized answer.

    ground_truth: {question_id: answer str, or {"answer": str}}. Both sides go through the full official VQA
    normalization ("the dog." == "dog"). Returns overall, per_question ({question_id: 0 or 100}), n_questions.
    """
    preds = predictions_to_dict(predictions)
    if not ground_truth:
        raise ValueError("The ground truth holds no answers at all; this split cannot be scored locally.")
    if not preds:
        raise ValueError("No predictions to score.")
    missing = [qid for qid in preds if qid not in ground_truth]
    if missing:
        raise _missing_gt_error(missing, ground_truth)
    per_question: dict[Any, float] = {}
    for qid, answer in preds.items():
        gt = ground_truth[qid]
        gt = gt["answer"] if isinstance(gt, Mapping) else gt
        if not isinstance(gt, str):
            raise ValueError(f"Ground truth of question {qid!r} must be an answer string; got {gt!r}.")
        per_question[qid] = 100.0 if normalize_answer(answer) == normalize_answer(gt) else 0.0
    return {
        "overall": sum(per_question.values()) / len(per_question),
        "per_question": per_question,
        "n_questions": len(per_question),
    }


def load_vqa_ground_truth(path: str | Path) -> dict[Any, dict[str, Any]]:
    """Ground truth for `vqa_accuracy` from an official annotations file (v2_mscoco_*_annotations.json).

    Accepts the official {"annotations": [records]}, a bare list of records, or one record. Each record needs
    question_id and answers; answer_type and question_type are kept when present.
    """
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, Mapping) and "annotations" in data:
        records = data["annotations"]
    elif isinstance(data, Mapping):
        records = [data]
    else:
        records = data
    out: dict[Any, dict[str, Any]] = {}
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping) or "question_id" not in rec or "answers" not in rec:
            raise ValueError(f"{path}: annotation #{i} lacks 'question_id' or 'answers'; is this an answers file?")
        out[rec["question_id"]] = {
            "answers": _answer_strings(rec["question_id"], rec),
            "answer_type": rec.get("answer_type"),
            "question_type": rec.get("question_type"),
        }
    if not out:
        raise ValueError(f"{path}: no annotations found. {_NO_GT_HINT}")
    return out


def write_vqa_results(path: str | Path, predictions: PredictionsLike) -> Path:
    """Write `[{"question_id", "answer"}]`, the official server's results format; returns the path.

    Integer-looking string ids are written as integers, because the server matches them against its int ids.
    """
    path = Path(path)
    records = []
    for qid, answer in predictions_to_dict(predictions).items():
        if isinstance(qid, str) and qid.isdigit():
            qid = int(qid)
        records.append({"question_id": qid, "answer": answer})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records), encoding="utf-8")
    return path
