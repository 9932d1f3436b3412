"""Per question type accuracy of the transfer benchmark's (video) QA runs, against each type's best constant answer.

    python -m benchmarks.transfer.question_types [--task video_qa] [--run_root runs/transfer] [--shards shards/scenes]

Reads every finished report run of the task (`<run_root>/report/<task>/<method>-r<rank>-lr<lr>-s<seed>/eval/*/
vqa_results.json`) and the questions of the task's domain B test shards, and prints, per question type, the
accuracy of each method (mean over its seeds) next to the accuracy of the type's most frequent majority answer.
Scoring is exact match with the question's majority answer, as the video QA evaluator scores (image VQA's
official accuracy gives partial credit, so its column in `transfer.md` differs a little from these numbers).
A method near every type's constant has learned the answer priors, not to read the image or clip.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path

from unitrans_ds.cli import ArgumentParser
from unitrans_ds.evaluation.vqa import iter_shard_meta

from .suite import TASKS

RUN_DIR = re.compile(r"(?P<method>.+)-r\d+-lr[^-]+-s(?P<seed>\d+)$")


def majority(answers: list[str]) -> str:
    return Counter(answers).most_common(1)[0][0]


def load_questions(split: Path) -> dict:
    """question_id -> (question type, majority answer) over the split's shards."""
    return {
        q["question_id"]: (q.get("question_type") or q.get("answer_type") or "all", majority(q["answers"]))
        for meta in iter_shard_meta(split)
        for q in meta.get("questions", [])
        if q.get("answers")
    }


def method_accuracy(run_dirs: list[Path], questions: dict) -> dict[str, float]:
    """Question type -> exact-match accuracy (percent), the mean over the runs (seeds)."""
    per_type: dict[str, list[float]] = defaultdict(list)
    for run in run_dirs:
        results = sorted(run.glob("eval/*/vqa_results.json"))
        if not results:
            continue
        hits: dict[str, list[int]] = defaultdict(list)
        for r in json.loads(results[-1].read_text()):
            if r["question_id"] in questions:
                qtype, answer = questions[r["question_id"]]
                hits[qtype].append(int(r["answer"] == answer))
        for qtype, h in hits.items():
            per_type[qtype].append(100 * sum(h) / len(h))
    return {t: statistics.mean(v) for t, v in per_type.items()}


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    qa_tasks = [name for name, t in TASKS.items() if t.task == "vqa"]
    p.add_argument("--task", default="video_qa", choices=qa_tasks, help="the benchmark task")
    p.add_argument("--run_root", default="runs/transfer", help="the benchmark's --run_root")
    p.add_argument("--shards", default="shards/scenes", help="the benchmark's --shards")
    args = p.parse_args(argv)
    split = Path(args.shards) / TASKS[args.task].shards / "test"
    questions = load_questions(split)
    by_type: dict[str, list[str]] = defaultdict(list)
    for qtype, answer in questions.values():
        by_type[qtype].append(answer)
    constant = {t: 100 * Counter(a).most_common(1)[0][1] / len(a) for t, a in by_type.items()}
    runs: dict[str, list[Path]] = defaultdict(list)
    for run in sorted((Path(args.run_root) / "report" / args.task).glob("*")):
        m = RUN_DIR.match(run.name)
        if m and any(run.glob("eval/*/vqa_results.json")):  # finished runs only: one still training has no results
            runs[m["method"]].append(run)
    if not runs:
        print(f"no report runs of {args.task} under {args.run_root}/report/; run the benchmark first", file=sys.stderr)
        return 1
    acc = {method: method_accuracy(dirs, questions) for method, dirs in runs.items()}
    methods = sorted(acc)
    print(f"{args.task}: exact match with the majority answer, % (mean over seeds), {split}")
    print(f"{'question type':<18}{'n':>5}{'constant':>9}" + "".join(f"{m[:16]:>18}" for m in methods))
    for t in sorted(by_type):
        cells = "".join(f"{acc[m].get(t, float('nan')):>18.1f}" for m in methods)
        print(f"{t:<18}{len(by_type[t]):>5}{constant[t]:>9.1f}{cells}")
    print("seeds: " + ", ".join(f"{m} {len(runs[m])}" for m in methods))
    return 0


if __name__ == "__main__":
    sys.exit(main())
