"""What a split of synthetic shards offers a benchmark: how well answer priors score, how spread the answers
are, how often captions nearly repeat, and how many samples a test gets.

`python -m unitrans_ds.data.scenes.stats DIR [DIR ...]` prints them for make_shards output folders (any format
with questions and captions; made for `scenes`). The functions take sample `json` records, so tests and the
generator can call them on items in memory.

- best constant answer: the one answer that, given to every question (of a type, or of the whole split),
  scores the highest official VQA accuracy (`metrics.vqa.question_accuracy`, against the 10 answers).
- type prior: the mean over questions of their type's best constant score, i.e. a model that knows each
  question's type and nothing about the image.
- answer entropy: of the majority answers, in bits (log2 of the number of answers when they are uniform).
- near-duplicate caption rate: the fraction of captions equal to, or one word (inserted, deleted or
  replaced) away from, a caption of ANOTHER sample of the split.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tarfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ...metrics.vqa import question_accuracy


def _majority(answers: Sequence[str]) -> str:
    return Counter(answers).most_common(1)[0][0]


def _best_constant(questions: list[dict[str, Any]]) -> tuple[str, float]:
    """The constant answer with the highest mean VQA accuracy over `questions`, and that accuracy in percent."""
    # Accuracy ignores the answers' order: score each distinct multiset once.
    answer_lists = Counter(tuple(sorted(q["answers"])) for q in questions)
    candidates = sorted({a for answers in answer_lists for a in answers})
    scores = {c: sum(n * question_accuracy(c, answers) for answers, n in answer_lists.items()) for c in candidates}
    best = max(candidates, key=lambda c: (scores[c], c))
    return best, 100.0 * scores[best] / len(questions)


def _entropy_bits(values: Iterable[str]) -> float:
    counts = Counter(values)
    total = sum(counts.values())
    return -sum(n / total * math.log2(n / total) for n in counts.values())


def answer_priors(metas: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per question type: n, best constant answer and its accuracy, answer entropy, number of answers; and over
    the split: the best single constant answer and the type prior (see the module docstring)."""
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for meta in metas:
        for q in meta["questions"]:
            by_type[str(q.get("question_type"))].append(q)
    if not by_type:
        return {"types": {}, "n_questions": 0}
    types = {}
    for qtype, qs in sorted(by_type.items()):
        best, score = _best_constant(qs)
        majorities = [_majority(q["answers"]) for q in qs]
        types[qtype] = {
            "n": len(qs),
            "best_constant": best,
            "best_constant_acc": score,
            "entropy_bits": _entropy_bits(majorities),
            "n_answers": len(set(majorities)),
        }
    everything = [q for qs in by_type.values() for q in qs]
    best, score = _best_constant(everything)
    n = len(everything)
    return {
        "types": types,
        "n_questions": n,
        "best_constant": best,
        "best_constant_acc": score,
        "type_prior_acc": sum(t["best_constant_acc"] * t["n"] for t in types.values()) / n,
    }


def _within_one_edit(x: tuple[str, ...], y: tuple[str, ...]) -> bool:
    if abs(len(x) - len(y)) > 1:
        return False
    if len(x) == len(y):
        return sum(a != b for a, b in zip(x, y)) <= 1
    short, long = (x, y) if len(x) < len(y) else (y, x)
    i = next((k for k in range(len(short)) if short[k] != long[k]), len(short))
    return short[i:] == long[i + 1 :]


def _keys(words: tuple[str, ...]) -> set[tuple[str, ...]]:
    """Keys two captions within one word edit always share: the words with one word blanked ("*") or dropped."""
    keys = {("=",) + words}
    for k in range(len(words)):
        keys.add(("*",) + words[:k] + ("*",) + words[k + 1 :])
        keys.add(("-",) + words[:k] + words[k + 1 :])
    keys |= {("-",) + words}
    return keys


def near_duplicate_rates(metas: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Fractions (percent) of captions with an exact duplicate, and with a near duplicate (<= 1 word edit), in
    another sample; and caption lengths in words. Captions are compared as lower-case word sequences."""
    captions = [(s, tuple(c.lower().split())) for s, meta in enumerate(metas) for c in meta["captions"]]
    buckets: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for idx, (_, words) in enumerate(captions):
        for key in _keys(words):
            buckets[key].append(idx)
    exact = near = 0
    for sample, words in captions:
        others = {j for key in _keys(words) for j in buckets[key] if captions[j][0] != sample}
        exact += any(captions[j][1] == words for j in others)
        near += any(_within_one_edit(captions[j][1], words) for j in others)
    n = max(1, len(captions))
    lengths = [len(words) for _, words in captions] or [0]
    return {
        "n_captions": len(captions),
        "exact_pct": 100.0 * exact / n,
        "near_pct": 100.0 * near / n,
        "mean_words": sum(lengths) / len(lengths),
        "max_words": max(lengths),
    }


def split_stats(metas: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Everything this module reports for one split's sample records."""
    return {"n_samples": len(metas), "priors": answer_priors(metas), "captions": near_duplicate_rates(metas)}


def format_stats(title: str, stats: dict[str, Any]) -> str:
    """The report of `split_stats` as aligned text (what the command prints)."""
    p, c = stats["priors"], stats["captions"]
    lines = [
        f"{title}: {stats['n_samples']} samples, {p['n_questions']} questions, {c['n_captions']} captions",
        f"  near-duplicate captions (other sample, <= 1 word edit): {c['near_pct']:.2f}%  exact: {c['exact_pct']:.2f}%",
        f"  caption words: mean {c['mean_words']:.1f}, max {c['max_words']}",
    ]
    if p["n_questions"]:
        lines.append(f"  {'question type':<18} {'n':>5} {'answers':>7} {'entropy':>7}  best constant answer")
        for qtype, t in p["types"].items():
            lines.append(
                f"  {qtype:<18} {t['n']:>5} {t['n_answers']:>7} {t['entropy_bits']:>7.2f}  "
                f"{t['best_constant_acc']:5.1f}% ({t['best_constant']})"
            )
        lines.append(
            f"  best single constant answer over all questions: {p['best_constant_acc']:.1f}% ({p['best_constant']})"
        )
        lines.append(f"  type prior (best constant per type): {p['type_prior_acc']:.1f}%")
    return "\n".join(lines)


def read_metas(folder: Path) -> list[dict[str, Any]]:
    """The `json` records of every sample in a make_shards output folder, in shard order."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{folder}: no manifest.json; pass a folder written by unitrans_ds.make_shards")
    metas = []
    for shard in json.loads(manifest.read_text())["shards"]:
        with tarfile.open(folder / shard["name"]) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    metas.append(json.loads(tar.extractfile(member).read()))
    return metas


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m unitrans_ds.data.scenes.stats", description=__doc__.split("\n")[0])
    p.add_argument("folders", nargs="+", type=Path, help="make_shards output folders (one split each).")
    args = p.parse_args(argv)
    for folder in args.folders:
        try:
            metas = read_metas(folder)
        except (OSError, ValueError, KeyError, tarfile.TarError) as e:
            print(f"scenes.stats: error: {e}", file=sys.stderr)
            return 2
        print(format_stats(str(folder), split_stats(metas)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
