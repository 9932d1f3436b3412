"""The demo suite: the committed pretrained tiny BLIPs, the transfer benchmark command, its tables and plot.

The end-to-end test runs the real command (`python -m unitrans_ds.demo.transfer`) on a small subset: frozen and
unitrans on image retrieval, one seed, a short adaptation from `pretrained/tiny-blip-retrieval`, evaluated on
domain B val, with a real MLflow store in a temporary folder.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unitrans_ds.demo import pretrain, transfer
from unitrans_ds.demo.transfer import RunRecord

REPO = Path(__file__).resolve().parents[2]
PRETRAINED = REPO / "pretrained"
STEPS = 150  # a short adaptation: 2 epochs of domain B captions at batch 16 (~1 min on one core)


def _retrieval_ready() -> bool:
    return (PRETRAINED / "tiny-blip-retrieval" / "model.safetensors").is_file()


needs_pretrained = pytest.mark.skipif(not _retrieval_ready(), reason="pretrained/ not built yet")


# ---------------------------------------------------------------------- committed models
@needs_pretrained
def test_pretrained_models_fit_the_budget_and_load_as_plain_blip():
    from unitrans_ds.config.schema import ModelConfig
    from unitrans_ds.models.build import load_backbone

    folders = [PRETRAINED / pretrain.folder_name(t) for t in ("retrieval", "captioning", "vqa")]
    total = sum(f.stat().st_size for d in folders if d.is_dir() for f in d.rglob("*") if f.is_file())
    assert total < 20 * 2**20, f"pretrained/ holds {total / 2**20:.1f} MiB, over the 20 MB budget"
    for task, folder in zip(("retrieval", "captioning", "vqa"), folders):
        if not folder.is_dir():
            continue
        backbone = load_backbone(ModelConfig(init_from=str(folder)), task)
        assert backbone.newly_initialized == [], f"{folder} lacks weights: {backbone.newly_initialized[:5]}"
        assert not any(n.startswith("unitrans") for n, _ in backbone.model.named_parameters())
        record = json.loads((folder / "pretrain.json").read_text())
        assert record["task"] == task and record["steps"] > 0


def test_pretrain_config_trains_everything_on_domain_a_without_flips(tmp_path):
    cfg = pretrain.pretrain_config("vqa", pretrain.RECIPES["vqa"], "shards/demo/image_a/train", tmp_path)
    assert cfg.method.name == "full" and cfg.task == "vqa"
    assert cfg.data.train_shards.endswith("image_a/train") and cfg.data.val_shards is None
    assert cfg.data.hflip is False and cfg.data.randaugment is False
    assert cfg.model.tiny.vision_width == pretrain.TINY_SIZES["vision_width"]


def test_help_of_both_commands():
    for module in ("unitrans_ds.demo.pretrain", "unitrans_ds.demo.transfer"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 0 and "usage:" in out.stdout, out.stderr


def test_transfer_refuses_a_missing_pretrained_folder(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "unitrans_ds.demo.transfer",
            "--pretrained",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "unitrans_ds.demo.pretrain" in out.stderr and "nope" in out.stderr


# ---------------------------------------------------------------------- tables and plot from records
def _record(task: str, method: str, value: float, seed: int = 0, rank: int = 16, trainable: int = 100) -> RunRecord:
    return RunRecord(task, method, seed, rank, 10, "r_mean", value, trainable, 1000, 1.0, None, "val", {})


def test_tables_give_mean_std_params_and_gap_closed(tmp_path):
    records = [
        _record("image_retrieval", "frozen", 10.0, trainable=0),
        *(_record("image_retrieval", "full", v, seed=s, trainable=1000) for s, v in enumerate((28.0, 30.0, 32.0))),
        *(_record("image_retrieval", "unitrans", v, seed=s, trainable=50) for s, v in enumerate((19.0, 20.0, 21.0))),
    ]
    md = transfer.write_tables(records, tmp_path, 16, ["frozen", "full", "unitrans"], ["image_retrieval"])
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "transfer.csv").open())}
    assert float(rows["full"]["mean"]) == pytest.approx(30.0)
    assert float(rows["full"]["std"]) == pytest.approx(2.0)  # sample std of 28, 30, 32
    assert float(rows["unitrans"]["gap_closed_percent"]) == pytest.approx(50.0)  # (20-10)/(30-10)
    assert rows["unitrans"]["trainable_params"] == "50" and rows["frozen"]["trainable_params"] == "0"
    assert "| unitrans | 50 (5.00%) | 20.0 ± 1.0 | 50% |" in md
    assert (tmp_path / "transfer.md").read_text() == md


def test_rank_sweep_plot_is_a_png_with_one_row_per_point(tmp_path):
    from PIL import Image

    records = [_record("image_retrieval", m, 10.0 + r, rank=r, trainable=r * k) for m, k in (("unitrans", 10),
               ("lora", 1000)) for r in (2, 4, 8)]  # fmt: skip
    records.append(_record("image_retrieval", "frozen", 5.0, trainable=0))
    png = transfer.plot_rank_sweep(records, "image_retrieval", [2, 4, 8], tmp_path)
    assert png is not None and Image.open(png).format == "PNG"
    rows = list(csv.DictReader((tmp_path / "rank_sweep.csv").open()))
    assert [(r["method"], int(r["rank"])) for r in rows] == [(m, r) for m in ("unitrans", "lora") for r in (2, 4, 8)]
    assert [int(r["trainable_params"]) for r in rows if r["method"] == "lora"] == [2000, 4000, 8000]


# ---------------------------------------------------------------------- the real command, end to end
@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    if not _retrieval_ready():
        pytest.skip("pretrained/ not built yet")
    root = tmp_path_factory.mktemp("transfer")
    cmd = [
        sys.executable, "-m", "unitrans_ds.demo.transfer", "--methods", "frozen", "unitrans",
        "--tasks", "image_retrieval", "--seeds", "0", "--max-steps", str(STEPS), "--split", "val", "--no-sweep",
        "--out", str(root / "results"), "--run-root", str(root / "runs"),
        "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, proc


@pytest.mark.slow
def test_benchmark_command_writes_table_runs_and_mlflow(bench):
    root, proc = bench
    results = root / "results"
    rows = list(csv.DictReader((results / "transfer.csv").open()))
    assert sorted(r["method"] for r in rows) == ["frozen", "unitrans"]
    assert all(r["task"] == "image_retrieval" and r["metric"] == "r_mean" for r in rows)
    params = {r["method"]: int(r["trainable_params"]) for r in rows}
    assert params["frozen"] == 0 and 0 < params["unitrans"] < 0.05 * int(rows[0]["total_params"])
    md = (results / "transfer.md").read_text()
    assert "| frozen |" in md and "| unitrans |" in md and "image retrieval r_mean" in md
    runs = [json.loads(line) for line in (results / "runs.jsonl").read_text().splitlines()]
    assert {(r["method"], r["steps"]) for r in runs} == {("frozen", 0), ("unitrans", STEPS)}
    assert "[transfer] image_retrieval" in proc.stdout  # progress lines

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("unitrans-transfer")
    names = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert {"image_retrieval-frozen-r16-s0", "image_retrieval-unitrans-r16-s0", "transfer-summary"} <= set(names)
    assert all(r.info.status == "FINISHED" for r in names.values())
    assert "test/r_mean" in names["image_retrieval-unitrans-r16-s0"].data.metrics
    assert names["image_retrieval-unitrans-r16-s0"].data.tags["method"] == "unitrans"


@pytest.mark.slow
def test_unitrans_beats_frozen_on_domain_b_retrieval(bench):
    root, _ = bench
    runs = {json.loads(line)["method"]: json.loads(line) for line in (root / "results" / "runs.jsonl").open()}
    frozen, adapted = runs["frozen"]["metrics"], runs["unitrans"]["metrics"]
    assert runs["unitrans"]["split"] == "val"
    # a visible gain, not noise: R@1 and the mean recall both move up
    assert adapted["r_mean"] > frozen["r_mean"] + 2.0, (frozen, adapted)
    assert adapted["txt_r1"] + adapted["img_r1"] > frozen["txt_r1"] + frozen["img_r1"], (frozen, adapted)
