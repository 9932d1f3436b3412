"""Caption scoring agrees with pycocoevalcap's COCOEvalCap run directly on the same real files.

The fixtures are the coco-caption demo's 1000 generated captions and the real COCO val2014 references of those
images (tests/fixtures/README.md). Each full scoring starts the PTB tokenizer and METEOR in Java: about 15 s.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pycocoevalcap.eval as cocoevalcap_eval
import pytest
from pycocotools.coco import COCO

from unitrans_ds.metrics.captions import (
    load_coco_references,
    score_captions,
    spice_unavailable_reason,
    write_coco_results,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"
RESULTS = FIXTURES / "captions_val2014_fakecap_results.json"
GT = FIXTURES / "captions_val2014_fakecap_subset_gt.json"
METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


class _NoSpice:
    """Stands in for pycocoevalcap's Spice inside COCOEvalCap only, and only where SPICE cannot run here.

    COCOEvalCap builds Spice() unconditionally, and Spice() downloads Stanford CoreNLP when its jars are
    missing; this machine has no network. The stand-in touches no other scorer.
    """

    def compute_score(self, gts, res):
        return float("nan"), [float("nan")] * len(gts)

    def method(self):
        return "SPICE"


def _cocoevalcap_direct(results_path: Path, gt_path: Path) -> dict:
    coco = COCO(str(gt_path))
    coco_res = coco.loadRes(str(results_path))
    evaluator = cocoevalcap_eval.COCOEvalCap(coco, coco_res)
    evaluator.params["image_id"] = coco_res.getImgIds()  # as BLIP/LAVIS call it
    evaluator.evaluate()
    return dict(evaluator.eval)


#: images of the fixture scored by the agreement test: 1000 took 29 s (both sides run the Java tokenizer and METEOR)
AGREEMENT_IMAGES = 300


def _first_images(tmp_path: Path, n: int) -> tuple[Path, Path]:
    """The fixture's results and references cut to its first `n` images, as COCO-format files."""
    results = json.loads(RESULTS.read_text())[:n]
    keep = {r["image_id"] for r in results}
    gt = json.loads(GT.read_text())
    gt["images"] = [im for im in gt["images"] if im["id"] in keep]
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in keep]
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    return tmp_path / "results.json", tmp_path / "gt.json"


@pytest.mark.slow
def test_agrees_with_cocoevalcap_on_real_captions(tmp_path, monkeypatch, caplog):
    spice_here = spice_unavailable_reason() is None
    if not spice_here:
        monkeypatch.setattr(cocoevalcap_eval, "Spice", _NoSpice)
    results_path, gt_path = _first_images(tmp_path, AGREEMENT_IMAGES)
    theirs = _cocoevalcap_direct(results_path, gt_path)

    results = json.loads(results_path.read_text())
    with caplog.at_level(logging.WARNING, logger="unitrans_ds.metrics.captions"):
        ours = score_captions(results, load_coco_references(gt_path), spice="auto")

    for m in METRICS:
        assert ours[m] == pytest.approx(theirs[m], abs=1e-9), m
    assert ours["n_images"] == AGREEMENT_IMAGES
    # Sanity on the real numbers: the demo's "fake" captions are mediocre but far from zero.
    assert 0.5 < ours["Bleu_1"] < 0.7 and 0.1 < ours["Bleu_4"] < 0.3 and 0.4 < ours["CIDEr"] < 1.0
    if spice_here:
        assert ours["SPICE"] == pytest.approx(theirs["SPICE"], abs=1e-9)
    else:
        assert "SPICE" not in ours
        assert "stanford-corenlp-3.6.0" in ours["spice_skipped_reason"]
        assert "SPICE skipped" in caplog.text


def test_spice_on_without_its_models_is_an_error():
    reason = spice_unavailable_reason()
    if reason is None:
        pytest.skip("SPICE's CoreNLP jars are installed here, so spice='on' would run it.")
    with pytest.raises(RuntimeError, match="stanford-corenlp-3.6.0"):
        score_captions([{"image_id": 1, "caption": "a cat"}], {1: ["a cat on a mat"]}, spice="on")


def test_result_without_reference_is_an_error():
    refs = load_coco_references(GT)
    with pytest.raises(ValueError, match=r"have no reference captions, e\.g\. \[123\]"):
        score_captions([{"image_id": 123, "caption": "a cat"}], refs)
    with pytest.raises(ValueError, match="int vs str"):
        score_captions([{"image_id": "404464", "caption": "a cat"}], refs)


def test_duplicate_results_and_bad_modes_are_errors():
    refs = {1: ["a cat"]}
    with pytest.raises(ValueError, match="two generated captions"):
        score_captions([{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}], refs)
    with pytest.raises(ValueError, match="spice must be one of"):
        score_captions([{"image_id": 1, "caption": "a"}], refs, spice="yes")


def test_load_coco_references_reads_all_references():
    refs = load_coco_references(GT)
    assert len(refs) == 1000
    assert sum(len(v) for v in refs.values()) == 5005
    # Verbatim, stray leading space included: the PTB tokenizer deals with it.
    assert refs[404464][0] == " Persons skating in the ice skating rink on the skateboard."


def test_load_coco_references_rejects_other_formats(tmp_path):
    path = tmp_path / "karpathy_test.json"
    path.write_text(json.dumps([{"image": "x.jpg", "caption": ["a cat"]}]))
    with pytest.raises(ValueError, match="is not a COCO-format captions file"):
        load_coco_references(path)


def test_write_coco_results_is_loadable_by_pycocotools(tmp_path):
    results = json.loads(RESULTS.read_text())[:5]
    path = write_coco_results(tmp_path / "out" / "captions.json", results)
    coco_res = COCO(str(GT)).loadRes(str(path))
    assert sorted(coco_res.getImgIds()) == sorted(r["image_id"] for r in results)
    assert json.loads(path.read_text()) == [{"image_id": r["image_id"], "caption": r["caption"]} for r in results]
