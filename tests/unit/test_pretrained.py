"""The committed tiny BLIPs (`pretrained/`): within the weight budget, and plain HF BLIP folders that load whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.transfer import pretrain

PRETRAINED = Path(__file__).resolve().parents[2] / "pretrained"
TASKS = ("retrieval", "captioning", "vqa")


def test_committed_weights_fit_the_25_mb_budget():
    total = sum(f.stat().st_size for f in PRETRAINED.rglob("*") if f.is_file())
    assert total < 25 * 2**20, f"pretrained/ holds {total / 2**20:.1f} MiB, over the 25 MB budget (issue 10)"


# the demo's and the benchmark's (scenes A), and the first stage of the scenes retrieval recipe (shapes A)
FOLDERS = [(task, PRETRAINED / "scenes" / pretrain.folder_name(task)) for task in TASKS] + [
    ("retrieval", PRETRAINED / "shapes" / pretrain.folder_name("retrieval"))
]


@pytest.mark.parametrize(("task", "folder"), FOLDERS, ids=[str(f.relative_to(PRETRAINED)) for _, f in FOLDERS])
def test_each_backbone_loads_as_plain_blip_with_its_record(task, folder):
    from unitrans_ds.config.schema import ModelConfig
    from unitrans_ds.models.build import load_backbone

    backbone = load_backbone(ModelConfig(init_from=str(folder)), task)
    assert backbone.newly_initialized == [], f"{folder} lacks weights: {backbone.newly_initialized[:5]}"
    assert not any(n.startswith("unitrans") for n, _ in backbone.model.named_parameters())
    record = json.loads((folder / "pretrain.json").read_text())
    assert record["task"] == task and record["steps"] > 0
