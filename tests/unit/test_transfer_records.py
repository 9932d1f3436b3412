"""The transfer benchmark's records (`benchmarks/transfer/records.py`): a run on other backbone weights is another
result, never reused; the committed results were made on the committed backbones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from benchmarks.transfer import run
from benchmarks.transfer.records import RunRecord, append_record, backbone_fingerprint
from benchmarks.transfer.suite import TASKS

REPO = Path(__file__).resolve().parents[2]
RELEASED = REPO / "pretrained" / "scenes"


def _perturbed_copy(src: Path, dst: Path) -> Path:
    """`src` copied, one weight tensor moved by 0.5: the same architecture and config, other weights."""
    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + 0.5
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_fingerprint_follows_the_weights_not_the_folder(tmp_path):
    src = RELEASED / "tiny-blip-vqa"
    same = shutil.copytree(src, tmp_path / "copy")
    other = _perturbed_copy(src, tmp_path / "perturbed")
    assert backbone_fingerprint(same) == backbone_fingerprint(src)
    assert backbone_fingerprint(other) != backbone_fingerprint(src)
    assert backbone_fingerprint(RELEASED / "tiny-blip-retrieval") != backbone_fingerprint(src)


def _rec(value: float, backbone: str | None, seed: int = 0) -> RunRecord:
    return RunRecord("vqa", "full", seed, "test", TASKS["vqa"].metric, value, 10, 10, 1e-4, 16, 200, "report",
                     "scenes max_steps=200 batch=16 warmup=10", backbone=backbone)  # fmt: skip


def test_runs_on_other_backbones_are_left_out_and_said(tmp_path, capsys):
    """A benchmark pointed at other weights (`--pretrained`) neither reports nor resumes the runs of the old ones."""
    pretrained = tmp_path / "pretrained"
    other = _perturbed_copy(RELEASED / "tiny-blip-vqa", pretrained / "tiny-blip-vqa")
    for split in ("train", "val", "test"):  # check_inputs asks for the shards' manifests; --report_only reads none
        (tmp_path / "shards" / "image_b" / split).mkdir(parents=True)
        (tmp_path / "shards" / "image_b" / split / "manifest.json").write_text("{}")
    out = tmp_path / "results"
    append_record(out / "runs.jsonl", _rec(11.0, backbone_fingerprint(RELEASED / "tiny-blip-vqa")))
    append_record(out / "runs.jsonl", _rec(22.0, None, seed=1))  # written before records had fingerprints
    append_record(out / "runs.jsonl", _rec(33.0, backbone_fingerprint(other)))
    args = ["--tasks", "vqa", "--methods", "full", "--seeds", "0", "--no_sweep", "--report_only", "--out", str(out),
            "--pretrained", str(pretrained), "--shards", str(tmp_path / "shards")]  # fmt: skip
    assert run.main(args) == 0
    printed = capsys.readouterr().out
    assert "2 runs in" in printed and "other backbones" in printed and "tasks: vqa" in printed, printed
    row = next(line for line in (out / "transfer.md").read_text().splitlines() if line.startswith("| full |"))
    assert "33.0" in row and "11.0" not in row and "22.0" not in row, row
    assert len((out / "runs.jsonl").read_text().splitlines()) == 3  # kept in the file


def test_committed_results_were_made_on_the_committed_backbones():
    """Every committed run of the current benchmark names the released backbone of its task: a re-released backbone
    without a regenerated benchmark fails here (the README's tables would describe weights that are gone)."""
    released = {t: backbone_fingerprint(RELEASED / f"tiny-blip-{b.backbone}") for t, b in TASKS.items()}
    rows = [json.loads(line) for line in (REPO / "benchmarks/results/runs.jsonl").read_text().splitlines() if line]
    assert {r["task"] for r in rows} == set(TASKS)
    wrong = [(r["task"], r["method"], r["seed"]) for r in rows if r.get("backbone") != released[r["task"]]]
    assert not wrong, (
        f"benchmarks/results/runs.jsonl: runs made on other backbones than pretrained/scenes/: {wrong[:5]}"
    )
