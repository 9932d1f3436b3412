"""launchers/eval.py end to end: a saved adapter on real shapes shards on one rank (the launcher's main() in
process), zero-shot, a mismatched adapter, and 2 ranks under the deepspeed launcher logging to a real MLflow store."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers.mlflow_store import fresh_sqlite_uri
from helpers.runs import ok  # exit 0 and no rank aborted at its interpreter's exit (test_teardown.py)

from unitrans_ds import make_shards
from unitrans_ds.adapters import load_adapter, prepare_model, save_adapter
from unitrans_ds.config import load_config
from unitrans_ds.evaluation import evaluate
from unitrans_ds.models.build import load_backbone
from unitrans_ds.tasks import build_task

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SIZE = 32


def _eval_main():
    spec = importlib.util.spec_from_file_location("eval_launcher", ROOT / "launchers" / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("launcher")
    for split, n, seed in (("train", 8, 0), ("test", 8, 2)):
        args = ["--format", "shapes", "--domain", "b", "--split", split, "--num-samples", str(n), "--seed", str(seed),
                "--shard-size", "2", "--image-size", str(SIZE), "--workers", "1", "--out", str(root / split),
                "--no-progress"]  # fmt: skip
        assert make_shards.main(args) == 0
    config = {
        "task": "retrieval",
        "method": {"name": "unitrans", "rank": 4},
        "model": {"init_from": "tiny", "image_size": SIZE},
        "data": {"train_shards": str(root / "train"), "val_shards": None, "test_shards": str(root / "test")},
        "eval": {"k_test": 4, "batch_size": 4},
        "train": {"output_dir": str(root / "run")},
        "tracking": {"experiment": "eval-test"},
    }
    cfg_path = root / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    cfg = load_config(cfg_path)
    bb = load_backbone(cfg.model, cfg.task, seed=cfg.train.seed)
    prepare_model(bb.model, cfg.method)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter: away from the identity init
        for name, p in bb.model.named_parameters():
            if p.requires_grad and ("vcra_b" in name or "qasn_b" in name):
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    adapter = save_adapter(bb.model, root / "adapter", cfg.method, "tiny", extra={"step": 7, "task": "retrieval"})
    return {"root": root, "config": cfg_path, "adapter": adapter}


def run_eval(args: list[str], ranks: int = 1, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [sys.executable, "launchers/eval.py", *args]
    if ranks > 1:
        port = str(29700 + os.getpid() % 1000)
        cmd = [str(BIN / "deepspeed"), "--num_accelerators", str(ranks), "--master_port", port, *cmd[1:]]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def scores(folder: Path) -> np.ndarray:
    return np.array([json.loads(line)["scores"] for line in (folder / "i2t_topk.jsonl").read_text().splitlines()])


def test_help_names_every_option(capsys):
    # the launcher's main() in this process; its own process runs in the slow test below
    with pytest.raises(SystemExit) as done:
        _eval_main()(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--config", "--adapter", "--split", "--out", "--mlflow", "--local_rank"):
        assert opt in out


@pytest.mark.slow
def test_saved_adapter_one_rank_equals_in_process_and_two_deepspeed_ranks_with_mlflow(setup, tmp_path, capsys):
    # one rank: the launcher's main() in this process (`python launchers/eval.py` as a process of its own runs in
    # test_video.py and, under `deepspeed`, in test_readme_examples.py and below)
    out = tmp_path / "out"
    base = ["--config", str(setup["config"]), "--adapter", str(setup["adapter"])]
    capsys.readouterr()
    assert _eval_main()([*base, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"txt_r1", "img_r1", "r_mean", "itc_r_mean", "itc_txt_r1", "itc_img_r1"} <= set(metrics)
    for name in ("i2t_topk.jsonl", "t2i_topk.jsonl", "retrieval_index.json", "config.yaml"):
        assert (out / name).is_file(), name
    assert "image token store" in printed
    # The same backbone with the adapter loaded here, evaluated without the launcher, gives the same scores...
    cfg = load_config(setup["config"])
    bb = load_backbone(cfg.model, cfg.task, seed=cfg.train.seed)
    assert load_adapter(bb.model, setup["adapter"]).name == "unitrans"
    evaluate(build_task(cfg, bb.model, bb.tokenizer), cfg, cfg.data.test_shards, 0, 1, tmp_path / "here")
    np.testing.assert_allclose(scores(out), scores(tmp_path / "here"), atol=1e-5)
    # ... the adapter matters: the zero-shot run (in process) scores differently ...
    assert _eval_main()(["--config", str(setup["config"]), "--out", str(tmp_path / "zs")]) == 0
    assert not np.allclose(scores(out), scores(tmp_path / "zs"), atol=1e-4)

    # ... and 2 ranks under the deepspeed launcher give the same metrics, logged to a real MLflow store.
    from mlflow.tracking import MlflowClient

    from unitrans_ds.config.schema import TrackingConfig
    from unitrans_ds.tracking import build_tracker

    uri = fresh_sqlite_uri(tmp_path / "mlflow.db")
    # the training run the adapter came from: its run folder (the adapter's parent) records its MLflow run
    tracking = TrackingConfig(experiment="eval-test", tracking_uri=uri, system_metrics_interval_s=None)
    train = build_tracker(tracking, 0, Path(setup["adapter"]).parent)
    train_id = train.start("the-training-run", {"kind": "train"}, {})
    train.finish()
    two = tmp_path / "two"
    ok(run_eval([*base, "--out", str(two), "--mlflow"], ranks=2, env={"MLFLOW_TRACKING_URI": uri}))
    m2 = json.loads((two / "metrics.json").read_text())
    metrics.pop("eval_seconds"), m2.pop("eval_seconds")
    assert m2 == metrics
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("eval-test").experiment_id
    (run,) = client.search_runs([experiment], "tags.kind = 'eval'")
    assert run.data.tags["unitrans_ds.train_run_id"] == train_id == run.data.tags["mlflow.parentRunId"]
    # the names training logs (`test/r_mean`; counts and timing under `test_info/`)
    assert run.data.metrics["test/r_mean"] == pytest.approx(m2["r_mean"])
    assert run.data.metrics["test_info/n_images"] == m2["n_images"] and "r_mean" not in run.data.metrics
    assert run.data.tags["kind"] == "eval" and run.data.tags["split"] == "test"
    assert run.data.tags["mlflow.source.name"] == "launchers/eval.py"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"eval_test"}
    assert [h.step for h in client.get_metric_history(run.info.run_id, "test/r_mean")] == [7]  # the adapter's step
    # the run was open while it evaluated: it lasts at least the evaluation
    assert run.info.end_time - run.info.start_time >= 1000 * run.data.metrics["test_info/eval_seconds"]


def test_zero_shot_vqa_in_process_writes_into_the_default_folder(setup, tmp_path):
    args = ["--config", str(setup["config"]), "task=vqa", "eval.vqa_k_test=3", f"train.output_dir={tmp_path / 'run'}"]
    assert _eval_main()(args) == 0
    out = tmp_path / "run" / "eval_test"
    metrics = json.loads((out / "metrics.json").read_text())
    assert "accuracy" in metrics and "acc_yes_no" in metrics
    results = json.loads((out / "vqa_results.json").read_text())
    assert results and set(results[0]) == {"question_id", "answer"}
    assert yaml.safe_load((out / "config.yaml").read_text())["task"] == "vqa"


def test_mismatched_adapter_fails_with_a_clear_message(setup, tmp_path, capsys):
    cfg = load_config(setup["config"], ["model.tiny.text_width=32"])
    bb = load_backbone(cfg.model, cfg.task, seed=0)
    prepare_model(bb.model, cfg.method)
    other = save_adapter(bb.model, tmp_path / "narrow", cfg.method, "tiny-narrow")
    code = _eval_main()(["--config", str(setup["config"]), "--adapter", str(other), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "does not fit this base model" in err and str(other) in err, err
    assert not (tmp_path / "o" / "metrics.json").exists()
    # An adapter of another task class is refused by name.
    code = _eval_main()(["--config", str(setup["config"]), "task=captioning", "--adapter", str(setup["adapter"])])
    assert code == 2 and "BlipForImageTextRetrieval" in capsys.readouterr().err


def test_missing_split_and_bad_override_fail_with_status_2(setup, capsys):
    main = _eval_main()
    assert main(["--config", str(setup["config"]), "--split", "val"]) == 2
    assert "data.val_shards is null" in capsys.readouterr().err
    assert main(["--config", str(setup["config"]), "eval.k_tset=3"]) == 2
    assert "k_tset" in capsys.readouterr().err


def test_adapter_onto_another_base_config_or_rank_is_warned(setup, tmp_path, caplog):
    """Same shapes, other settings (the position table) and another method.rank in the config: loads, warned."""
    args = ["--config", str(setup["config"]), "--adapter", str(setup["adapter"]), "--out", str(tmp_path / "o"),
            "model.tiny.max_position_embeddings=48", "method.rank=8"]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="unitrans_ds.eval"):
        assert _eval_main()(args) == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "unitrans_ds.eval"]
    assert any(
        "was trained on a base with config hash" in m and "shapes fit but settings differ" in m for m in messages
    )
    assert any("is unitrans with rank 4, the config says unitrans with rank 8" in m for m in messages), messages
