"""Captioning evaluation: beam search on every rank's share of the split, COCO metrics on rank 0 (SPEC 5).

Called by `evaluation.runner.evaluate` on every rank. Each rank captions the images its eval loader yields
(`CaptioningTask.generate`: beams, min/max length and the prompt from `cfg.eval`), the results are gathered, and
rank 0 writes them in the COCO results format and scores them with pycocoevalcap (`score_captions`: PTB
tokenizer, BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE where its jars are installed) against the split's own
captions. The runner builds the loader without the 30-word cut, so the references are the shard json's full
captions (lowercased and with BLIP's punctuation `.!"()*#:;~` removed by the loader; the PTB tokenizer removes the
same punctuation, so only `* # ~` differ from scoring the raw strings).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..collectives import all_gather_objects, on_rank0
from ..data.loaders import EvalLoader
from ..metrics.captions import score_captions, write_coco_results
from ..tasks.captioning import CaptioningTask
from ..tracking.progress import progress
from .inference import inference_mode

logger = logging.getLogger(__name__)

RESULTS_FILE = "caption_results.json"
REFERENCES_FILE = "caption_references.json"


class NoGroundTruthError(ValueError):
    """The split carries no reference captions or answers, so it cannot be scored locally."""


def _result_id(sample_id: str, image_id: Any) -> Any:
    """COCO's `image_id` when the shard has one, else the sample id (shards without a numeric id)."""
    return image_id if image_id is not None else sample_id


def generate_captions(task: CaptioningTask, loader: EvalLoader, rank: int) -> list[dict[str, Any]]:
    """This rank's `[{"image_id", "caption", "references"}]`. Needs `inference_mode` around it."""
    out = []
    for batch in progress(loader, total=len(loader), desc="captioning: beam search", enabled=rank == 0, leave=False):
        captions = task.generate(batch["pixel_values"])
        for sid, iid, cap, refs in zip(batch["id"], batch["image_id"], captions, batch["captions"]):
            out.append({"image_id": _result_id(sid, iid), "caption": cap, "references": list(refs)})
    return out


def _merge_ranks(per_rank: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    seen: dict[Any, int] = {}
    merged = []
    for rec in (r for part in per_rank for r in part):
        if rec["image_id"] in seen:
            raise ValueError(
                f"image_id {rec['image_id']!r} was captioned twice; the eval loader must give each image to exactly "
                "one rank (is the same image stored twice in the shards?)"
            )
        seen[rec["image_id"]] = 1
        merged.append(rec)
    # A fixed order, whatever the number of ranks, so results files compare line for line.
    return sorted(merged, key=lambda r: str(r["image_id"]))


def score_and_write(records: list[dict[str, Any]], out_dir: Path, split: str) -> dict[str, float]:
    """Rank 0: write the results (and references) files and score them. Returns numeric metrics only."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = [{"image_id": r["image_id"], "caption": r["caption"]} for r in records]
    path = write_coco_results(out_dir / RESULTS_FILE, results)
    refs = {r["image_id"]: r["references"] for r in records if r["references"]}
    ann = [
        {"image_id": i, "id": n, "caption": c} for n, (i, c) in enumerate((i, c) for i, cs in refs.items() for c in cs)
    ]
    (out_dir / REFERENCES_FILE).write_text(json.dumps({"images": [{"id": i} for i in refs], "annotations": ann}))
    if not refs:
        raise NoGroundTruthError(
            f"{split} has no reference captions (the shards' `captions` are empty), so it cannot be scored; the "
            f"generated captions are in {path}. Evaluate a split with captions."
        )
    missing = [r["image_id"] for r in records if not r["references"]]
    if missing:
        logger.warning("%d image(s) of %s have no reference caption and are not scored", len(missing), split)
    scores = score_captions([r for r in results if r["image_id"] in refs], refs, spice="auto")
    reason = scores.pop("spice_skipped_reason", None)
    if reason is not None:
        print(f"[unitrans_ds] captioning: SPICE not computed: {reason.split(';')[0]}", flush=True)
    return {k: float(v) for k, v in scores.items()}


def evaluate_captioning(
    task: CaptioningTask,
    loader: EvalLoader,
    rank: int,
    world_size: int,
    out_dir: str | Path,
    merge: bool = True,
) -> dict[str, float]:
    """Caption metrics of `task` on the loader's split (a collective: every rank calls it with its loader).

    Returns Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr, SPICE (only where it can run) and n_images, equal on every
    rank. Rank 0 writes `caption_results.json` (`[{"image_id", "caption"}]`, COCO results format) and
    `caption_references.json` (COCO ground-truth format) into `out_dir`. Raises `NoGroundTruthError` (after
    writing the results) when the split has no captions.
    """
    with inference_mode(task, merge):
        local = generate_captions(task, loader, rank)
    records = _merge_ranks(all_gather_objects(local, world_size))
    return on_rank0(lambda: score_and_write(records, Path(out_dir), str(loader.manifest.folder)), rank, world_size)
