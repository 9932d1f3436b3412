"""Caption metrics through pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L, CIDEr, and SPICE where it can run.

The captioning task's evaluation calls `score_captions` with its generated captions and the split's references
(`load_coco_references` reads a COCO-format ground-truth file), and `write_coco_results` to keep the results
file. The scoring is COCOEvalCap's, step by step: PTB-tokenize references and results (lowercased, punctuation
dropped), then the scorers, over the images that have a result, as BLIP/LAVIS do
(`coco_eval.params["image_id"] = coco_result.getImgIds()`). Scores are on pycocoevalcap's scale (0..1, CIDEr
0..10), not percent.

SPICE needs Stanford CoreNLP 3.6.0, which pycocoevalcap downloads from nlp.stanford.edu on first use. Where the
jars are not installed (no network), `spice="auto"` skips SPICE, logs why, and says so in the returned dict.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from importlib import util as importlib_util
from pathlib import Path
from typing import Any

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

logger = logging.getLogger(__name__)

SPICE_MODES = ("auto", "on", "off")
_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def spice_unavailable_reason() -> str | None:
    """Why SPICE cannot run here, or None when java, spice-1.0.jar and the CoreNLP 3.6.0 jars are all present."""
    if shutil.which("java") is None:
        return "SPICE needs Java 8+ on PATH and `java` was not found."
    spec = importlib_util.find_spec("pycocoevalcap.spice.spice")
    if spec is None or spec.origin is None:
        return "pycocoevalcap.spice is not installed."
    spice_dir = Path(spec.origin).parent
    missing = [
        p for p in [spice_dir / "spice-1.0.jar", *(spice_dir / "lib" / j for j in _CORENLP_JARS)] if not p.is_file()
    ]
    if missing:
        return (
            f"SPICE needs {', '.join(p.name for p in missing)} in {spice_dir} and they are missing; pycocoevalcap "
            "downloads Stanford CoreNLP 3.6.0 from nlp.stanford.edu on first use. Run "
            "`python -c 'from pycocoevalcap.spice.get_stanford_models import get_stanford_models as g; g()'` on a "
            f"machine with internet access, or copy the two jars into {spice_dir / 'lib'}."
        )
    return None


def _results_to_dict(results: Sequence[Mapping[str, Any]]) -> dict[Any, str]:
    out: dict[Any, str] = {}
    for i, rec in enumerate(results):
        if not isinstance(rec, Mapping) or "image_id" not in rec or "caption" not in rec:
            raise ValueError(f"Caption result #{i} must be a mapping with 'image_id' and 'caption'; got {rec!r}.")
        if not isinstance(rec["caption"], str):
            raise ValueError(f"Caption result #{i} (image {rec['image_id']!r}) has a non-string caption.")
        if rec["image_id"] in out:
            raise ValueError(
                f"Image {rec['image_id']!r} has two generated captions ({out[rec['image_id']]!r} and "
                f"{rec['caption']!r}); the scorers take exactly one per image: deduplicate by image_id."
            )
        out[rec["image_id"]] = rec["caption"]
    return out


def _tokenize(captions: dict[Any, list[str]], what: str) -> dict[Any, list[str]]:
    tokenized = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    # The tokenizer pairs its output lines back by position; a lost line would shift every later caption.
    bad = [k for k, v in captions.items() if len(tokenized.get(k, [])) != len(v)]
    if bad:
        raise RuntimeError(f"PTBTokenizer returned the wrong number of {what} for image(s) {bad[:5]}.")
    return tokenized


def _run_spice(gts: dict[Any, list[str]], res: dict[Any, list[str]]) -> float:
    from pycocoevalcap.spice.spice import Spice

    score, _ = Spice().compute_score(gts, res)
    return float(score)


def score_captions(
    results: Sequence[Mapping[str, Any]],
    references: Mapping[Any, Sequence[str]],
    spice: str = "auto",
) -> dict[str, Any]:
    """Score generated captions against references, as COCOEvalCap does, over the images in `results`.

    results: [{"image_id", "caption"}], one per image. references: {image_id: [reference captions]}; every result
    image needs references. spice: "auto" (run when `spice_unavailable_reason()` is None and the run succeeds,
    otherwise skip with a logged warning), "on" (a failure is an error), "off". Returns Bleu_1..Bleu_4, METEOR,
    ROUGE_L, CIDEr, SPICE (when run), n_images, and `spice_skipped_reason` (str, only when SPICE was wanted and
    skipped: the one non-numeric key, so drop it before logging the dict as metrics).
    """
    if spice not in SPICE_MODES:
        raise ValueError(f"spice must be one of {SPICE_MODES}; got {spice!r}.")
    if spice == "on" and (reason := spice_unavailable_reason()) is not None:
        raise RuntimeError(reason)  # before minutes of scoring, not after
    res_captions = _results_to_dict(results)
    if not res_captions:
        raise ValueError("No generated captions to score.")
    missing = [i for i in res_captions if not references.get(i)]
    if missing:
        raise ValueError(
            f"{len(missing)} result image(s) have no reference captions, e.g. {missing[:5]}; results and "
            "references must come from the same split (check the image_id type: int vs str)."
        )
    gts = _tokenize({i: list(references[i]) for i in res_captions}, "references")
    res = _tokenize({i: [c] for i, c in res_captions.items()}, "results")

    scores: dict[str, Any] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores.update({f"Bleu_{n + 1}": float(b) for n, b in enumerate(bleu)})
    meteor = Meteor()
    try:
        scores["METEOR"] = float(meteor.compute_score(gts, res)[0])
    finally:
        del meteor  # stops its java process now rather than at garbage collection
    scores["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])

    if spice != "off":
        reason = spice_unavailable_reason()
        if reason is None:
            try:
                scores["SPICE"] = _run_spice(gts, res)
            except (subprocess.CalledProcessError, OSError, ValueError) as err:
                if spice == "on":
                    raise
                reason = f"SPICE failed to run: {err}"
        if reason is not None:
            logger.warning("Caption metrics: SPICE skipped. %s", reason)
            scores["spice_skipped_reason"] = reason
    scores["n_images"] = len(res_captions)
    return scores


def load_coco_references(path: str | Path) -> dict[Any, list[str]]:
    """{image_id: [captions]} from a COCO-format captions file ({"images", "annotations": [{image_id, caption}]}).

    Captions are kept verbatim (the PTB tokenizer handles case, spaces and punctuation). Images listed without
    any caption are left out.
    """
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, Mapping) or not isinstance(data.get("annotations"), list):
        raise ValueError(
            f"{path} is not a COCO-format captions file: expected a JSON object with an 'annotations' list of "
            "{'image_id', 'caption'} (like captions_val2014.json or BLIP's coco_karpathy_test_gt.json)."
        )
    refs: dict[Any, list[str]] = {}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, Mapping) or "image_id" not in ann or "caption" not in ann:
            raise ValueError(f"{path}: annotation #{i} lacks 'image_id' or 'caption': {ann!r}.")
        refs.setdefault(ann["image_id"], []).append(ann["caption"])
    if not refs:
        raise ValueError(f"{path}: the 'annotations' list is empty.")
    return refs


def write_coco_results(path: str | Path, results: Sequence[Mapping[str, Any]]) -> Path:
    """Write `[{"image_id", "caption"}]` (COCO results format, one caption per image); returns the path."""
    path = Path(path)
    records = [{"image_id": k, "caption": v} for k, v in _results_to_dict(results).items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records), encoding="utf-8")
    return path
