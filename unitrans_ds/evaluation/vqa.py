"""VQA evaluation (image VQA and video QA): rank or generate inference, official accuracy on rank 0 (SPEC 5).

`VQATask.evaluate` runs these steps on every rank. Each rank answers the questions its eval loader yields:
`rank` inference (`VQATask.rank_answers`: the `eval.vqa_k_test` answers of the answer list with the highest
first-token probability, re-scored by full likelihood) or `generate` (`eval.vqa_inference`). Results are gathered
and rank 0 writes `vqa_results.json` (`[{"question_id", "answer"}]`, the official server's format) and scores:
image VQA with the official accuracy (`vqa_accuracy`, overall and per answer type; the evaluator release
`eval.vqa_evaluator`, printed when it runs), video QA (`video: true`,
MSRVTT-QA) with exact match (`exact_match_accuracy`) against each question's most frequent answer.

The answer list for `rank` inference comes from `data.answer_list` (a JSON list of strings) or, when that is
null, from the training split: the `MAX_ANSWERS` most frequent answers over all its questions (BLIP's VQA v2
list has 3128), written into the output folder so a result can be reproduced.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data.loaders import EvalLoader
from ..data.manifest import read_manifest
from ..data.remote import open_tar
from ..data.text import normalize_answer_text
from ..metrics.vqa import exact_match_accuracy, vqa_accuracy, write_vqa_results
from ..tracking.progress import progress
from .captioning import NoGroundTruthError

if TYPE_CHECKING:  # the task class runs these steps (its `evaluate`); no import at run time
    from ..tasks.vqa import VQATask

logger = logging.getLogger(__name__)

MAX_ANSWERS = 3128
RESULTS_FILE = "vqa_results.json"
ANSWER_LIST_FILE = "answer_list.json"
PER_QUESTION_FILE = "vqa_per_question.json"
INFERENCE = ("rank", "generate")


def iter_shard_meta(folder: str | Path) -> Iterator[dict[str, Any]]:
    """The json record of every sample in a shards folder, in manifest order, without reading the images.

    Tar headers are visited and member data skipped by seeking, so this costs little even for big splits.
    """
    manifest = read_manifest(folder)
    for shard in manifest.shards:
        with open_tar(shard.path) as tar:  # local: seeks past the images; remote: streams
            for member in tar:
                if member.isfile() and member.name.endswith(".json"):
                    f = tar.extractfile(member)
                    if f is not None:
                        yield json.loads(f.read())


def answer_list_from_split(folder: str | Path, max_answers: int = MAX_ANSWERS) -> list[str]:
    """The `max_answers` most frequent answers of a (training) split, most frequent first, ties alphabetical.

    Answers are normalized as the training loss sees them (lowercase, whitespace collapsed).
    """
    counts: Counter[str] = Counter()
    for meta in iter_shard_meta(folder):
        for q in meta.get("questions", []):
            counts.update(a for a in (normalize_answer_text(x) for x in q.get("answers", [])) if a)
    if not counts:
        raise NoGroundTruthError(
            f"{folder}: no answers in the training split to build the VQA answer list from; set data.answer_list to a "
            "JSON list of answers, or point data.train_shards at a split with answers"
        )
    ranked = sorted(counts, key=lambda a: (-counts[a], a))
    return ranked[:max_answers]


def load_answer_list(path: str | Path) -> list[str]:
    """A JSON list of answer strings (BLIP's `answer_list.json`)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data.answer_list: {p} does not exist; give a JSON list of answers or null")
    data = json.loads(p.read_text())
    if not isinstance(data, list) or not data or not all(isinstance(a, str) for a in data):
        raise ValueError(f"data.answer_list: {p} must hold a non-empty JSON list of strings")
    return data


def resolve_answer_list(answer_list: str | None, train_shards: str) -> list[str]:
    """`data.answer_list`, or the training split's most frequent answers (the task reads it on rank 0 only)."""
    if answer_list:
        return load_answer_list(answer_list)
    try:
        return answer_list_from_split(train_shards)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"VQA rank inference needs an answer list: data.answer_list is null and the training split "
            f"data.train_shards={train_shards} cannot be read ({e}). Set data.answer_list to a JSON list of "
            "answers, point data.train_shards at the training shards, or use eval.vqa_inference=generate."
        ) from e


def distinct_images(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """An evaluation batch's distinct images and, per question, which of them it asks about.

    Evaluation has one item per question, so an image with several questions comes once per question, and its
    questions are consecutive. Their pixels are the same (evaluation transforms are deterministic, and the item
    is the sample's), so the ViT runs once per run of consecutive questions with the same sample id: 8 questions
    per image made it 8x. Only neighbours are merged, and never items whose sample has no id (`"None"`)."""
    ids = batch["id"]
    rows, image_of = [], []
    for i, sid in enumerate(ids):
        if not (i and sid == ids[i - 1] and sid != "None"):
            rows.append(i)
        image_of.append(len(rows) - 1)
    return batch["pixel_values"][rows], torch.tensor(image_of, dtype=torch.long)


def answer_questions(
    task: VQATask, loader: EvalLoader, rank: int, answer_list: list[str] | None
) -> list[dict[str, Any]]:
    """This rank's `[{"question_id", "answer", "answers", "answer_type"}]`. Needs `inference_mode` around it."""
    s = task.settings
    out = []
    for batch in progress(loader, total=len(loader), desc=f"vqa: {s.inference}", enabled=rank == 0, leave=False):
        pixels, image_of = distinct_images(batch)
        if answer_list is not None:
            preds = task.rank_answers(pixels, batch["question"], answer_list, s.k_test, image_of)
        else:
            preds = task.generate_answers(pixels, batch["question"], image_of)
        for qid, pred, answers, atype in zip(batch["question_id"], preds, batch["answers"], batch["answer_type"]):
            out.append({"question_id": qid, "answer": pred, "answers": list(answers), "answer_type": atype})
    return out


def _metric_key(answer_type: str) -> str:
    return "acc_" + re.sub(r"[^0-9A-Za-z]+", "_", answer_type).strip("_")


def score_and_write(
    records: list[dict[str, Any]], out_dir: Path, split: str, video: bool, evaluator: str = "lavis-2017"
) -> dict[str, float]:
    """Rank 0: write the results file, then score the questions that have answers (image VQA with the
    `evaluator` release of the official accuracy, `eval.vqa_evaluator`). Numeric metrics only."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = write_vqa_results(
        out_dir / RESULTS_FILE, [{"question_id": r["question_id"], "answer": r["answer"]} for r in records]
    )
    scored = [r for r in records if r["answers"]]
    if not scored:
        raise NoGroundTruthError(
            f"{split} has no answers (ground truth), so it cannot be scored locally; the predictions are in {path} "
            "for the official server. Evaluate a split with answers."
        )
    if len(scored) < len(records):
        logger.warning(
            "%d of %d questions of %s have no answers and are not scored",
            len(records) - len(scored),
            len(records),
            split,
        )
    preds = [{"question_id": r["question_id"], "answer": r["answer"]} for r in scored]
    if video:
        gt = {r["question_id"]: Counter(r["answers"]).most_common(1)[0][0] for r in scored}
        acc = exact_match_accuracy(preds, gt)
        metrics = {"accuracy": acc["overall"], "overall": acc["overall"]}
    else:
        gt = {r["question_id"]: {"answers": r["answers"], "answer_type": r["answer_type"]} for r in scored}
        # Which release scored it goes into the log (and the run's params); the two differ (metrics/vqa.py).
        print(f"[unitrans_ds] VQA accuracy of {split}: the {evaluator} evaluator (eval.vqa_evaluator)", flush=True)
        acc = vqa_accuracy(preds, gt, evaluator)
        metrics = {
            "accuracy": acc["overall"],
            "overall": acc["overall"],
            **{_metric_key(k): v for k, v in acc["per_answer_type"].items()},
        }
    per_q = [{"question_id": q, "accuracy": a} for q, a in acc["per_question"].items()]
    (out_dir / PER_QUESTION_FILE).write_text(json.dumps(per_q))
    metrics["n_questions"] = float(len(scored))
    return {k: float(v) for k, v in metrics.items()}


def merge_ranks(per_rank: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every rank's answers in one list sorted by question id; a question answered twice is an error."""
    records = [r for part in per_rank for r in part]
    ids = [r["question_id"] for r in records]
    if len(set(ids)) != len(ids):
        dup = next(q for q, n in Counter(ids).items() if n > 1)
        raise ValueError(f"question_id {dup!r} was answered twice; question ids must be unique within a split")
    return sorted(records, key=lambda r: str(r["question_id"]))
