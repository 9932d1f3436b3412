"""`launchers/train.py --config configs/coco_retrieval.yaml --dry_run 1`: a paper config's real architecture
(BLIP-base, 224 px checkpoint run at 384 px) through make_shards, two training steps and one evaluation, offline.

BLIP-base at 384 px is slow on a small CPU, so this runs an image config with a micro batch of 1 (retrieval: its
evaluation is several times faster than captioning's beam search on CPU); the image size, the data and the
inference settings are the config's own."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.launchers import train_in_process

from unitrans_ds.config import ConfigError, load_config
from unitrans_ds.dryrun import dry_run
from unitrans_ds.dryrun.native import SHARD_COMMANDS, guide_commands

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "reproducing.md"
PAPER = ["coco_retrieval", "flickr30k_retrieval", "coco_captioning", "vqav2", "msrvtt_retrieval",
         "didemo_retrieval", "msrvtt_qa"]  # fmt: skip


def _guide_lines() -> set[str]:
    return {line.strip() for line in GUIDE.read_text().splitlines() if "unitrans_ds.make_shards" in line}


@pytest.mark.parametrize("name", PAPER)
def test_the_guide_shards_each_config_with_the_commands_the_dry_run_runs(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    folders = {s: getattr(cfg.data, f"{s}_shards") for s in ("train", "val", "test")}
    folders = {s: f for s, f in folders.items() if f}
    expected = guide_commands(cfg.data.dataset, folders)
    assert sorted(folders) == sorted(c.split for c in SHARD_COMMANDS[cfg.data.dataset])
    assert set(expected) <= _guide_lines(), f"docs/reproducing.md lacks: {set(expected) - _guide_lines()}"
    assert f"python launchers/train.py --config configs/{name}.yaml --dry_run" in GUIDE.read_text()


@pytest.mark.slow
def test_dry_run_of_a_paper_image_config(tmp_path):
    cmd = [sys.executable, str(ROOT / "launchers" / "train.py"), "--ds_config", str(ROOT / "ds_configs" / "zero2.json"),
           "--config", str(ROOT / "configs" / "coco_retrieval.yaml"), "--dry_run", "1"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    work = tmp_path / "runs" / "dry_run" / "coco_retrieval"
    summary = json.loads((work / "dry_run.json").read_text())
    assert (summary["architecture_image_size"], summary["image_size"]) == (224, 384)  # interpolated, as for real
    assert summary["dry_run_micro_batch"] == 1 and summary["real_micro_batch"] == 32
    assert len(summary["step_seconds"]) == 2 and all(math.isfinite(x) for x in summary["losses"])
    assert summary["eval_seconds"] > 0 and summary["activations_bf16_gib"] > 1
    for split in ("train", "val", "test"):  # every make_shards command of the guide ran
        assert json.loads((work / "shards" / split / "manifest.json").read_text())["total_samples"] == 3
    final = json.loads((work / "run" / "final_metrics.json").read_text())
    assert {"val/txt_r1", "val/img_r1", "val/r_mean"} <= set(final)
    assert "estimated activations for the real micro batch of 32" in proc.stdout


def test_dry_run_of_a_config_without_native_samples_is_one_clear_line(tmp_path, monkeypatch, capsys):
    # a BLIP-base starting point the dry run knows, on the demo's synthetic data set, which it has no writer for;
    # the launcher's main() in this process (the slow test above runs the dry run as its own process)
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(ROOT / "configs" / "demo_retrieval.yaml"), "model.init_from=pretrained/blip/model_base.pth",
            "--dry_run"]  # fmt: skip
    assert train_in_process(args) == 2
    err = capsys.readouterr().err
    assert "error: data.dataset='scenes-b': the dry run writes samples for coco, didemo, flickr30k" in err
    assert "Traceback" not in err


def test_dry_run_of_an_init_without_a_stored_architecture_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="model.init_from='Salesforce/blip-itm-base-coco': the dry run knows"):
        dry_run(
            str(ROOT / "configs" / "coco_retrieval.yaml"), ["model.init_from=Salesforce/blip-itm-base-coco"], "zero2"
        )
    assert not (tmp_path / "runs").exists()
