"""What a tiny BLIP reads off a `scenes` image: per attribute, from its evaluation outputs.

    python -m benchmarks.transfer.diagnose [--shards shards/scenes/image_a/test] [--pretrained pretrained/scenes]
        [--captions DIR] [--vqa DIR] [--retrieval DIR] [--out runs/diagnose] [--json out.json]

Without `--captions` / `--vqa`, it first evaluates the captioning and VQA backbones of `--pretrained` zero-shot on
`--shards` (as the benchmark and the pretraining sanity check evaluate them) into `--out`, then reads those outputs.

`--captions`: a folder with `caption_results.json` and `caption_references.json` (a captioning evaluation). For each
attribute (colour, shape, size, mark, position words of the scenes grammar), the share of the attribute words in
the generated captions that the image's own references use, next to the same share against the references of a
shuffled image: the level of a model that writes plausible words without looking. A model that sees an attribute
scores well above its shuffled level.

`--vqa`: a folder with `vqa_results.json` (a VQA evaluation). Per question type of the split (read from `--shards`):
the accuracy (official VQA accuracy, against the 10 answers), the best constant answer's accuracy, how many distinct
answers the model gave and the share of its most common one. A type at its constant level, answered with one or
two answers, is one the model does not read off the image.

`--retrieval`: a folder with `retrieval_index.json` and `t2i_topk.jsonl` (an image-retrieval evaluation of a scenes
split: `python -m benchmarks.transfer.pretrain` writes one per stage into `<run_root>/<stage>/sanity_a`). Per caption
kind (the four captions of the scenes grammar, in their order), text-to-image: R@1 after ITM re-ranking and the
share whose image is among the re-ranked candidates at all (ITC's R@k, k = `eval.k_test`). A kind with a high
R@k and a low R@1 is one where ITC finds the image and ITM does not pick it.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

from unitrans_ds.cli import ArgumentParser
from unitrans_ds.data.scenes.stats import answer_priors, read_metas
from unitrans_ds.data.scenes.texts import IMAGE_CAPTION_KINDS
from unitrans_ds.data.scenes.world import COLORS, COLS, MARKS, ROWS, SHAPES, SIZES
from unitrans_ds.metrics.vqa import question_accuracy

#: the scenes grammar's words per attribute (world.py); `middle` names no place alone, the grammar says `center`
ATTRIBUTE_WORDS = {
    "colour": set(COLORS),
    "shape": set(SHAPES),
    "size": set(SIZES),
    "mark": set(MARKS) - {"none"},
    "position": (set(ROWS) | set(COLS) | {"center"}) - {"middle"},
}


def _words(text: str, vocabulary: set[str]) -> list[str]:
    return [w for w in re.findall(r"[a-z]+", text.lower()) if w in vocabulary]


def caption_attributes(results: dict, references: dict[object, list[str]], seed: int = 0) -> dict[str, dict]:
    """Per attribute: `precision` (%) of its generated words against the image's references, `shuffled` (%)
    against another image's, and `n` words. `results`: image id -> caption; `references`: image id -> captions."""
    ids = sorted(results, key=str)
    other = ids[:]
    random.Random(seed).shuffle(other)
    out = {}
    for name, vocabulary in ATTRIBUTE_WORDS.items():
        hits = shuffled = n = 0
        for image, stranger in zip(ids, other, strict=True):
            own = {w for ref in references[image] for w in _words(ref, vocabulary)}
            theirs = {w for ref in references[stranger] for w in _words(ref, vocabulary)}
            for w in _words(results[image], vocabulary):
                n, hits, shuffled = n + 1, hits + (w in own), shuffled + (w in theirs)
        out[name] = {"n": n, "precision": 100 * hits / n if n else None, "shuffled": 100 * shuffled / n if n else None}
    return out


def vqa_types(answers: dict[str, str], metas: list[dict]) -> dict[str, dict]:
    """Per question type: n, `accuracy` (%), the `constant` level (best constant answer, %), `distinct` answers
    given and `top_share` (%) of the most common. `answers`: question id -> the model's answer."""
    by_type: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
    for meta in metas:
        for q in meta["questions"]:
            if q["question_id"] in answers:
                by_type[q["question_type"]].append((answers[q["question_id"]], q["answers"]))
    priors = answer_priors(metas)["types"]
    out = {}
    for qtype, pairs in sorted(by_type.items()):
        given = Counter(a for a, _ in pairs)
        out[qtype] = {
            "n": len(pairs),
            "accuracy": 100 * sum(question_accuracy(a, refs) for a, refs in pairs) / len(pairs),
            "constant": priors[qtype]["best_constant_acc"],
            "distinct": len(given),
            "top_share": 100 * given.most_common(1)[0][1] / len(pairs),
        }
    return out


def retrieval_kinds(index: dict, t2i: list[dict]) -> dict[str, dict]:
    """Per caption kind: n, `r1` (%) and `in_candidates` (%) of text-to-image retrieval, and `k` (candidates per
    query). `index`: `retrieval_index.json`; `t2i`: the rows of `t2i_topk.jsonl`. A caption's kind is its place
    among its image's captions (the grammar writes them in `IMAGE_CAPTION_KINDS` order)."""
    seen: Counter = Counter()
    kind_of, image_of = {}, {}
    for t in index["texts"]:
        place = seen[t["image"]]
        seen[t["image"]] += 1
        if place >= len(IMAGE_CAPTION_KINDS):
            raise ValueError(
                f"image {t['image']} has more than {len(IMAGE_CAPTION_KINDS)} captions: not a scenes split"
            )
        kind_of[t["index"]], image_of[t["index"]] = IMAGE_CAPTION_KINDS[place], t["image"]
    tally: dict[str, list[int]] = {kind: [0, 0, 0] for kind in IMAGE_CAPTION_KINDS}
    k = 0
    for row in t2i:
        truth, ranked = image_of[row["query"]], row["images"]
        k = max(k, len(ranked))
        n = tally[kind_of[row["query"]]]
        n[0], n[1], n[2] = n[0] + 1, n[1] + (ranked[:1] == [truth]), n[2] + (truth in ranked)
    return {
        kind: {"n": n, "r1": 100 * r1 / n, "in_candidates": 100 * hit / n, "k": k}
        for kind, (n, r1, hit) in tally.items()
        if n
    }


def _read_captions(folder: Path) -> tuple[dict, dict]:
    results = {r["image_id"]: r["caption"] for r in json.loads((folder / "caption_results.json").read_text())}
    references: dict[object, list[str]] = defaultdict(list)
    for a in json.loads((folder / "caption_references.json").read_text())["annotations"]:
        references[a["image_id"]].append(a["caption"])
    return results, references


#: the backbones evaluated when no outputs are given
TASKS = ("captioning", "vqa")


def _evaluate(pretrained: str, task: str, shards: str, out: str) -> Path:
    """Evaluate `pretrained/tiny-blip-<task>` zero-shot on `shards` as the benchmark does; the output folder."""
    from .suite import TASKS as BENCH
    from .zero_shot import evaluate_backbone

    folder = Path(pretrained) / f"tiny-blip-{task}"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not a save_pretrained folder; pass --pretrained or --{'captions' if task == 'captioning' else task} DIR"
        )
    overrides = list(next(t.overrides for t in BENCH.values() if t.task == task and not t.video))
    evaluate_backbone(folder, task, shards, overrides=overrides, out_dir=Path(out) / task)
    return Path(out) / task


def _table(title: str, head: list[str], rows: list[list[str]]) -> str:
    lines = [title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog="python -m benchmarks.transfer.diagnose",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--shards", default="shards/scenes/image_a/test", help="the scenes split (its questions and their types)"
    )
    p.add_argument("--pretrained", default="pretrained/scenes", help="the backbones evaluated without --captions/--vqa")
    p.add_argument("--captions", default=None, help="folder of a captioning evaluation (caption_results.json, ...)")
    p.add_argument("--vqa", default=None, help="folder of a VQA evaluation (vqa_results.json)")
    p.add_argument(
        "--retrieval",
        default=None,
        help="folder of an image-retrieval evaluation (retrieval_index.json, t2i_topk.jsonl)",
    )
    p.add_argument("--out", default="runs/diagnose", help="where the zero-shot evaluations write")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    figures: dict[str, dict] = {}
    try:
        if not (args.captions or args.vqa or args.retrieval):
            args.captions, args.vqa = (_evaluate(args.pretrained, task, args.shards, args.out) for task in TASKS)
        if args.captions:
            figures["captions"] = caption_attributes(*_read_captions(Path(args.captions)))
            rows = [[k, str(v["n"]), _pct(v["precision"]), _pct(v["shuffled"])] for k, v in figures["captions"].items()]
            print(
                _table("Caption words the image's references use (%)", ["attribute", "words", "own", "shuffled"], rows)
            )
        if args.vqa:
            answers = {
                r["question_id"]: r["answer"] for r in json.loads((Path(args.vqa) / "vqa_results.json").read_text())
            }
            figures["vqa"] = vqa_types(answers, read_metas(Path(args.shards)))
            rows = [
                [k, str(v["n"]), _pct(v["accuracy"]), _pct(v["constant"]), str(v["distinct"]), _pct(v["top_share"])]
                for k, v in figures["vqa"].items()
            ]
            head = ["question type", "n", "accuracy", "best constant", "answers given", "most common (%)"]
            print(_table("VQA per question type", head, rows))
        if args.retrieval:
            folder = Path(args.retrieval)
            index = json.loads((folder / "retrieval_index.json").read_text())
            t2i = [json.loads(line) for line in (folder / "t2i_topk.jsonl").read_text().splitlines() if line]
            figures["retrieval"] = retrieval_kinds(index, t2i)
            rows = [
                [kind, str(v["n"]), _pct(v["r1"]), _pct(v["in_candidates"])] for kind, v in figures["retrieval"].items()
            ]
            k = next(iter(figures["retrieval"].values()), {}).get("k", "k")
            head = ["caption kind", "n", "R@1", f"image among the {k} candidates"]
            print(_table("Text to image per caption kind (%)", head, rows))
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
