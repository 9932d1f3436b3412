"""Tracker behaviour against a real MLflow store (SQLite in a temp folder) and a real, then killed, MLflow server."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.mlflow_store import fresh_sqlite_uri
from helpers.ports import free_port

from unitrans_ds.config.schema import TrackingConfig
from unitrans_ds.engine.versions import collect_versions, git_commit, git_dirty
from unitrans_ds.tracking import JOURNAL_FILE, METRICS_FILE, JsonlTracker, NullTracker, build_tracker

REPO = Path(__file__).resolve().parents[2]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def mlflow_client_cls():
    """MLflow takes seconds to import: once per module."""
    from mlflow.tracking import MlflowClient

    return MlflowClient


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh SQLite store (tests/helpers/mlflow_store.py); cwd moves to tmp so that artifacts (default root
    ./mlruns) land there too."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return fresh_sqlite_uri(tmp_path / "mlflow.db")


def _tracker(uri: str, run_dir: Path, experiment: str = "unit", **kw):
    cfg = TrackingConfig(experiment=experiment, tracking_uri=uri, system_metrics_interval_s=None, **kw)
    return build_tracker(cfg, rank=0, run_dir=run_dir)


NONZERO_RANK_SCRIPT = """
import sys
from pathlib import Path
from unitrans_ds.config.schema import TrackingConfig
from unitrans_ds.tracking import build_tracker
tmp, artifact = Path(sys.argv[1]), Path(sys.argv[2])
cfg = TrackingConfig(experiment="x", tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
t = build_tracker(cfg, rank=int(sys.argv[3]), run_dir=tmp / "run")
assert t.start("run", {"a": "b"}, {"p": 1}) is None
t.log_params({"q": 2}); t.log_metrics({"loss": 1.0}, step=1); t.set_tags({"x": "y"})
t.log_artifact(artifact); t.log_artifact(artifact.parent, "folder"); t.log_dict({"a": 1}, "d.json")
t.finish("FAILED")
print("MLFLOW_IMPORTED" if "mlflow" in sys.modules else "MLFLOW_NOT_IMPORTED")
"""


@pytest.mark.parametrize("rank", [1, 3])
def test_nonzero_ranks_never_write_nor_touch_mlflow(tmp_path, rank):
    watched, elsewhere = tmp_path / "watched", tmp_path / "elsewhere"
    watched.mkdir()
    elsewhere.mkdir()
    (elsewhere / "adapter.safetensors").write_bytes(b"x")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-c", NONZERO_RANK_SCRIPT, str(watched), str(elsewhere / "adapter.safetensors"), str(rank)]
    proc = subprocess.run(cmd, cwd=watched, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "MLFLOW_NOT_IMPORTED" in proc.stdout
    assert list(watched.rglob("*")) == []


def test_rank_zero_does_write_in_the_same_setup(tmp_path, monkeypatch):
    """The control for the test above: the same calls on rank 0 create the store and the metrics file."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    t = _tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "run")  # no store yet: rank 0 creates it
    assert t.start("run", {}, {"p": 1}) is not None
    t.log_metrics({"loss": 1.0}, step=1)
    t.finish()
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "run" / METRICS_FILE).is_file()


def test_disabled_tracking_keeps_only_the_local_metrics_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = TrackingConfig(enabled=False, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    t = build_tracker(cfg, rank=0, run_dir=tmp_path / "run")
    assert isinstance(t, JsonlTracker)
    assert t.start("run", {}, {"p": 1}) is None and t.run_id is None
    t.log_metrics({"loss": torch.tensor(0.5)}, step=3)
    t.finish()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["metrics.jsonl", "run"]
    assert _read_jsonl(tmp_path / "run" / METRICS_FILE)[0]["loss"] == 0.5
    assert isinstance(build_tracker(cfg, rank=1, run_dir=tmp_path), NullTracker)


def test_params_metrics_artifacts_tags_status_round_trip(tmp_path, store, mlflow_client_cls):
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    params = {f"section.key{i:03d}": i for i in range(250)}  # > 100: needs several batches
    params["method.targets"] = "x" * (MAX_PARAM_VAL_LENGTH + 500)
    params["train.max_steps"] = None
    t = _tracker(store, tmp_path / "run", experiment="round-trip")
    run_id = t.start("retrieval-unitrans-demo", {"task": "retrieval"}, params)
    assert run_id == t.run_id
    t.log_metrics({"loss": 2.0, "lr": torch.tensor(1e-3), "nan_metric": float("nan")}, step=1)
    t.log_metrics({"loss": 1.0}, step=2)
    t.log_metrics({f"many/{i}": float(i) for i in range(1200)}, step=2)  # > 1000: several batches
    single = tmp_path / "resolved_config.yaml"
    single.write_text("task: retrieval\n")
    export = tmp_path / "adapter_best"
    export.mkdir()
    (export / "adapter_config.json").write_text("{}")
    (export / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    t.log_artifact(single)
    t.log_artifact(export)
    t.log_artifact(export, "exports/final")
    t.log_dict({"txt_r1": 50.0}, "eval/test_metrics.json")
    t.set_tags({"git_commit": "abc"})
    t.finish("FINISHED")

    client = mlflow_client_cls(tracking_uri=store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "retrieval-unitrans-demo"
    assert client.get_experiment(run.info.experiment_id).name == "round-trip"
    assert run.data.tags["task"] == "retrieval" and run.data.tags["git_commit"] == "abc"
    assert len(run.data.params) == 252
    assert run.data.params["section.key249"] == "249" and run.data.params["train.max_steps"] == "null"
    long = run.data.params["method.targets"]
    assert len(long) == MAX_PARAM_VAL_LENGTH and long.startswith("xxx")
    assert f"truncated from {MAX_PARAM_VAL_LENGTH + 500} chars" in long
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(1, 2.0), (2, 1.0)]
    assert client.get_metric_history(run_id, "lr")[0].value == pytest.approx(1e-3)
    assert run.data.metrics["many/1199"] == 1199.0
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"resolved_config.yaml", "adapter_best", "exports", "eval"} <= names
    assert {Path(a.path).name for a in client.list_artifacts(run_id, "adapter_best")} == {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    assert {Path(a.path).name for a in client.list_artifacts(run_id, "exports/final")} == {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    fetched = client.download_artifacts(run_id, "eval/test_metrics.json", str(tmp_path))
    assert json.loads(Path(fetched).read_text()) == {"txt_r1": 50.0}
    rows = _read_jsonl(tmp_path / "run" / METRICS_FILE)
    assert [r["step"] for r in rows] == [1, 2, 2]
    assert rows[0]["loss"] == 2.0 and rows[0]["nan_metric"] == "nan"
    assert {r["run_id"] for r in rows} == {run_id}  # every row names its MLflow run


def test_failed_status_and_bad_status(tmp_path, store, mlflow_client_cls):
    t = _tracker(store, tmp_path / "run")
    run_id = t.start("r", {}, {})
    with pytest.raises(ValueError, match="FINISHED, FAILED, KILLED"):
        t.finish("DONE")
    t.finish("FAILED")
    assert mlflow_client_cls(tracking_uri=store).get_run(run_id).info.status == "FAILED"


def test_resume_continues_the_same_run(tmp_path, store, mlflow_client_cls, caplog):
    first = _tracker(store, tmp_path / "run")
    run_id = first.start("r", {"task": "vqa"}, {"optim.lr": 1e-4, "train.resume": None})
    first.log_metrics({"loss": 3.0}, step=10)
    first.finish("KILLED")

    second = _tracker(store, tmp_path / "run")
    with caplog.at_level(logging.WARNING):
        assert second.start("r", {"task": "vqa"}, {"optim.lr": 1e-4, "train.resume": "auto"}, run_id) == run_id
    assert "param_update" in caplog.text
    second.log_metrics({"loss": 2.0}, step=20)
    second.finish("FINISHED")

    client = mlflow_client_cls(tracking_uri=store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(10, 3.0), (20, 2.0)]
    assert run.data.params["train.resume"] == "null" and run.data.tags["param_update.train.resume"] == "auto"
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_resume_of_an_unknown_run_starts_a_new_one(tmp_path, store, mlflow_client_cls):
    t = _tracker(store, tmp_path / "run")
    run_id = t.start("r", {}, {}, resume_run_id="0123456789abcdef0123456789abcdef")
    assert run_id and run_id != "0123456789abcdef0123456789abcdef"
    tags = mlflow_client_cls(tracking_uri=store).get_run(run_id).data.tags
    assert tags["resumed_from_missing_run"] == "0123456789abcdef0123456789abcdef"


def _warnings(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_unreachable_server_from_the_start(tmp_path, monkeypatch, caplog):
    """Training calls return at once; the run folder keeps everything; finish names the sync command."""
    monkeypatch.chdir(tmp_path)
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    run_dir = tmp_path / "run"
    cfg = TrackingConfig(tracking_uri=uri, finish_timeout_s=1.0, system_metrics_interval_s=None)
    t = build_tracker(cfg, rank=0, run_dir=run_dir)
    begin = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert t.start("r", {"a": "b"}, {"p": 1}) is None
        for step in range(1, 6):
            t.log_metrics({"loss": 1.0 / step, "acc": step / 10}, step=step)
        t.log_params({"q": 1})
        t.set_tags({"t": "1"})
        t.log_artifact(tmp_path)
        t.log_dict({"final": 1}, "final.json")
        t.finish("FINISHED")
    assert time.monotonic() - begin < 10
    warnings = _warnings(caplog, "unreachable (")
    assert len(warnings) == 1 and uri in warnings[0] and str(run_dir) in warnings[0]
    (last,) = _warnings(caplog, "still unreachable")
    assert f"python -m unitrans_ds.tracking.sync {run_dir}" in last and "5 metric row(s)" in last
    rows = _read_jsonl(run_dir / METRICS_FILE)
    assert [(r["step"], r["loss"], r["acc"]) for r in rows] == [(s, 1.0 / s, s / 10) for s in range(1, 6)]
    ops = [op["op"] for op in _read_jsonl(run_dir / JOURNAL_FILE)]
    assert ops == ["start", "params", "tags", "artifact", "dict", "finish"]


def test_tracking_uri_is_where_plain_mlflow_ui_looks(tmp_path, monkeypatch):
    import mlflow

    from unitrans_ds.tracking.mlflow_tracker import resolve_tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # MLflow 3's default store, the one a plain `mlflow ui` opens in the same folder
    assert resolve_tracking_uri(None) == mlflow.get_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert resolve_tracking_uri(None) == "http://tracking.example:5000"
    assert resolve_tracking_uri("sqlite:///x.db") == f"sqlite:///{tmp_path.resolve() / 'x.db'}"


def test_metrics_must_be_numbers(tmp_path):
    t = JsonlTracker(tmp_path)
    with pytest.raises(TypeError, match="metric 'name' must be a number"):
        t.log_metrics({"name": "abc"}, step=1)


def test_collect_versions():
    import transformers

    from unitrans_ds import __version__

    v = collect_versions()
    assert {"python", "torch", "transformers", "deepspeed", "unitrans_ds"} <= set(v)
    assert v["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert v["transformers"] == transformers.__version__
    assert v["unitrans_ds"] == __version__
    assert v["python"] == ".".join(map(str, sys.version_info[:3]))


def test_git_commit_inside_and_outside_git(tmp_path, monkeypatch):
    commit = git_commit()
    if (REPO / ".git").exists():
        assert commit is not None and re.fullmatch(r"[0-9a-f]{40}", commit)
        assert isinstance(git_dirty(), bool)
    monkeypatch.setenv("GIT_DIR", str(tmp_path))  # an empty folder is no repository
    assert git_commit() is None and git_dirty() is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable at all
    assert git_commit() is None
