"""VQA evaluation (image VQA and video QA): rank or generate inference, official accuracy on rank 0 (SPEC 5).

Called by `evaluation.runner.evaluate` on every rank. Each rank answers the questions its eval loader yields:
`rank` inference (`VQATask.rank_answers`: the `eval.vqa_k_test` answers of the answer list with the highest
first-token probability, re-scored by full likelihood) or `generate` (`eval.vqa_inference`). Results are gathered
and rank 0 writes `vqa_results.json` (`[{"question_id", "answer"}]`, the official server's format) and scores:
image VQA with the official accuracy (`vqa_accuracy`, overall and per answer type; the evaluator release
`eval.vqa_evaluator`, printed when it runs), video QA (`cfg.video`,
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
from typing import Any

from ..collectives import all_gather_objects, on_rank0
from ..data.loaders import EvalLoader
from ..data.manifest import read_manifest
from ..data.remote import open_tar
from ..data.text import normalize_answer_text
from ..metrics.vqa import exact_match_accuracy, vqa_accuracy, write_vqa_results
from ..tasks.vqa import VQATask
from ..tracking.progress import progress
from .captioning import NoGroundTruthError
from .inference import inference_mode

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


def resolve_answer_list(task: VQATask, rank: int, world_size: int) -> list[str]:
    """`data.answer_list`, or the training split's most frequent answers; read on rank 0, shared with all."""
    d = task.cfg.data

    def build() -> list[str]:
        if d.answer_list:
            return load_answer_list(d.answer_list)
        try:
            return answer_list_from_split(d.train_shards)
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"VQA rank inference needs an answer list: data.answer_list is null and the training split "
                f"data.train_shards={d.train_shards} cannot be read ({e}). Set data.answer_list to a JSON list of "
                "answers, point data.train_shards at the training shards, or use eval.vqa_inference=generate."
            ) from e

    return on_rank0(build, rank, world_size)


def answer_questions(
    task: VQATask, loader: EvalLoader, rank: int, answer_list: list[str] | None
) -> list[dict[str, Any]]:
    """This rank's `[{"question_id", "answer", "answers", "answer_type"}]`. Needs `inference_mode` around it."""
    e = task.cfg.eval
    out = []
    for batch in progress(loader, total=len(loader), desc=f"vqa: {e.vqa_inference}", enabled=rank == 0, leave=False):
        if answer_list is not None:
            preds = task.rank_answers(batch["pixel_values"], batch["question"], answer_list, e.vqa_k_test)
        else:
            preds = task.generate_answers(batch["pixel_values"], batch["question"])
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


def evaluate_vqa(
    task: VQATask,
    loader: EvalLoader,
    rank: int,
    world_size: int,
    out_dir: str | Path,
    merge: bool = True,
) -> dict[str, float]:
    """VQA accuracy of `task` on the loader's split (a collective: every rank calls it with its loader).

    Returns `accuracy` (percent; also under `overall`, the official evaluator's key, which configs and the trainer
    may name as best metric) and, for image VQA, `acc_<answer type>` (e.g. acc_yes_no, acc_number, acc_other),
    plus n_questions; equal on every rank. Rank 0 writes `vqa_results.json`, `vqa_per_question.json` and, for
    rank inference, `answer_list.json` into `out_dir`. Raises `NoGroundTruthError` (after writing the results)
    when no question of the split has answers.
    """
    e = task.cfg.eval
    if e.vqa_inference not in INFERENCE:
        raise ValueError(f"eval.vqa_inference must be one of {INFERENCE}, got {e.vqa_inference!r}")
    answer_list = resolve_answer_list(task, rank, world_size) if e.vqa_inference == "rank" else None
    if answer_list is not None and rank == 0:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / ANSWER_LIST_FILE).write_text(json.dumps(answer_list))
    with inference_mode(task, merge):
        local = answer_questions(task, loader, rank, answer_list)
    records = [r for part in all_gather_objects(local, world_size) for r in part]
    ids = [r["question_id"] for r in records]
    if len(set(ids)) != len(ids):
        dup = next(q for q, n in Counter(ids).items() if n > 1)
        raise ValueError(f"question_id {dup!r} was answered twice; question ids must be unique within a split")
    records.sort(key=lambda r: str(r["question_id"]))
    split = str(loader.manifest.folder)
    return on_rank0(
        lambda: score_and_write(records, Path(out_dir), split, task.cfg.video, task.cfg.eval.vqa_evaluator),
        rank,
        world_size,
    )
