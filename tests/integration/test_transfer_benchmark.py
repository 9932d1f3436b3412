"""The transfer benchmark's commands (`python -m benchmarks.transfer`, `python -m benchmarks.transfer.pretrain`), and a
smoke slice of the real benchmark (the CI slice: two methods, two seeds, a few steps, on small scenes shards made
here). Its plan, statistics and tables: tests/unit/test_transfer_stats.py."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.transfer import pretrain, run
from benchmarks.transfer.records import RunRecord, backbone_fingerprint
from benchmarks.transfer.suite import TASKS
from unitrans_ds import make_shards

REPO = Path(__file__).resolve().parents[2]
PRETRAINED = REPO / "pretrained"


def rec(task, method, value, seed=0, rank=16, phase="report", lr=0.01, split="test", trainable=100) -> RunRecord:
    return RunRecord(task, method, seed, split, TASKS[task].metric, value, trainable, 1000, lr, rank, 10, phase, "b")


# ---------------------------------------------------------------------- commands
# (`--help` of both commands: tests/unit/test_cli.py, in process)
def test_benchmark_refuses_a_missing_pretrained_folder(tmp_path, capsys):
    assert run.main(["--pretrained", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "benchmarks.transfer.pretrain" in err and "nope" in err and len(err.strip().splitlines()) == 1, err


def test_pretrain_config_trains_everything_on_domain_a_without_flips(tmp_path):
    first = pretrain.stages(pretrain.RECIPES["vqa"])[0]  # its `{out}/...` start is resolved by pretrain_task
    recipe = dataclasses.replace(first, init_from=str(tmp_path / "tiny-blip-captioning"))
    cfg = pretrain.pretrain_config("vqa", recipe, "shards/scenes/image_a/train", tmp_path)
    assert cfg.model.init_from == recipe.init_from and cfg.optim.lr == first.lr
    assert cfg.method.name == "full" and cfg.task == "vqa"
    assert cfg.data.train_shards.endswith("image_a/train") and cfg.data.val_shards is None
    assert cfg.data.hflip is False and cfg.data.randaugment is False and cfg.train.cpu_threads == 1
    assert cfg.data.min_scale == 1.0  # no random crop: scenes texts name positions and counts
    assert cfg.method.freeze == ["vision_model"]  # the vision stage's ViT stays locked (pretrained/README.md)


@pytest.mark.slow
def test_pretrain_from_stage_trains_the_rest_of_the_chain_from_a_saved_backbone(tmp_path):
    # the released 2-stage retrieval backbone as stage 1's output, the recipe's stage 2.. trained for one short epoch
    start = PRETRAINED / "scenes" / pretrain.folder_name("retrieval")
    if not (start / "model.safetensors").is_file():
        pytest.skip("pretrained/ not built yet")
    assert make_shards.main(
        ["--format", "scenes", "--domain", "a", "--split", "train", "--num_samples", "16", "--shard_size", "16",
         "--image_size", "64", "--seed", "0", "--no_progress", "--out", str(tmp_path / "shards" / "image_a" / "train")]
    ) == 0  # fmt: skip
    chain = pretrain.stages(pretrain.RECIPES["retrieval"])
    argv = ["--tasks", "retrieval", "--continue_from", str(start), "--from_stage", "2", "--epochs", "1",
            "--shards", str(tmp_path / "shards"), "--out", str(tmp_path / "out"), "--run_root", str(tmp_path / "runs"),
            "--no_sanity"]  # fmt: skip
    assert pretrain.main(argv) == 0
    record = json.loads((tmp_path / "out" / "tiny-blip-retrieval" / "pretrain.json").read_text())
    assert record["stage"] == f"{len(chain)} of {len(chain)}"  # the recipe's numbering
    assert record["steps"] == 2  # 16 images x 4 captions, batch 32, one epoch
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == [f"retrieval-from2-stage{k}" for k in range(2, len(chain) + 1)], runs
    if len(chain) > 2:  # stage 2 started from the given folder, each later one from the stage before
        first = json.loads(
            (tmp_path / "runs" / runs[0] / "release" / "tiny-blip-retrieval" / "pretrain.json").read_text()
        )
        assert first["recipe"]["init_from"] == str(start)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The CI slice: frozen and unitrans on image retrieval, 2 seeds, 3 steps, small scenes shards."""
    if not (PRETRAINED / "scenes" / "tiny-blip-retrieval" / "model.safetensors").is_file():
        pytest.skip("pretrained/ not built yet")
    root = tmp_path_factory.mktemp("transfer")
    for split, n in (("train", 64), ("val", 16), ("test", 16)):  # the command's main(), in this process
        assert make_shards.main(
            ["--format", "scenes", "--domain", "b", "--split", split, "--num_samples", str(n), "--shard_size", "32",
             "--image_size", "64", "--seed", "0", "--no_progress", "--out", str(root / "shards" / "image_b" / split)]
        ) == 0  # fmt: skip
    cmd = [
        sys.executable, "-m", "benchmarks.transfer", "--methods", "frozen", "unitrans", "--tasks", "image_retrieval",
        "--seeds", "0", "1", "--max_steps", "3", "--lr", "0.01", "--no_sweep", "--shards", str(root / "shards"),
        "--pretrained", str(PRETRAINED / "scenes"), "--workers", "2",  # two worker processes share one fresh MLflow store
        "--out", str(root / "results"), "--run_root", str(root / "runs"),
        "--tracking_uri", f"sqlite:///{root / 'mlflow.db'}",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, proc, cmd, env


@pytest.mark.slow
def test_smoke_slice_writes_runs_tables_and_mlflow_and_resumes(smoke, capsys):
    root, proc, cmd, env = smoke
    results = root / "results"
    runs = [json.loads(line) for line in (results / "runs.jsonl").read_text().splitlines()]
    assert sorted((r["method"], r["seed"], r["steps"]) for r in runs) == [
        ("frozen", 0, 0),
        ("unitrans", 0, 3),
        ("unitrans", 1, 3),
    ]
    for r in runs:  # the fields issue 10 names
        assert {"task", "method", "seed", "split", "metric", "value", "trainable", "total"} <= set(r)
        assert r["split"] == "test" and r["metric"] == "r_mean"
        assert 0 < r["cpu_seconds"] <= r["seconds"] * 1.5  # the worker's own CPU time (one thread, plus helpers)
        assert r["backbone"] == backbone_fingerprint(PRETRAINED / "scenes" / "tiny-blip-retrieval")
    md = (results / "transfer.md").read_text()
    assert "| unitrans |" in md and "synthetic" in md
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("unitrans-transfer")
    found = client.search_runs([exp.experiment_id])
    assert len(found) == 4 and all(r.info.status == "FINISHED" for r in found)  # 3 runs + the summary
    # resumable: a rerun (the command's main(), in this process) finds every run in runs.jsonl and trains nothing
    capsys.readouterr()
    assert run.main(cmd[cmd.index("benchmarks.transfer") + 1 :]) == 0
    assert "report and sweep: 0 runs to go" in capsys.readouterr().out
    assert len((results / "runs.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow
def test_report_only_writes_the_tables_of_an_unfinished_benchmark(smoke):
    """`--report_only` runs nothing and marks the cells that hold fewer seeds than asked for."""
    from benchmarks.transfer.run import main

    root, _, cmd, _ = smoke
    results = root / "results"
    (results / "transfer.md").unlink()
    before = (results / "runs.jsonl").read_text()
    assert main([*cmd[cmd.index("benchmarks.transfer") + 1 :], "--seeds", "0", "1", "2", "--report_only"]) == 0
    md = (results / "transfer.md").read_text()
    assert "(n=2)" in next(line for line in md.splitlines() if line.startswith("| unitrans |"))
    assert (results / "runs.jsonl").read_text() == before
