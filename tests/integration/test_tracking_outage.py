"""MLflow going away and coming back: a real `mlflow server` killed and restarted, and the sync command."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers.mlflow_store import fresh_sqlite_uri
from helpers.ports import free_port

from unitrans_ds.config.schema import TrackingConfig
from unitrans_ds.tracking import METRICS_FILE, build_tracker, sync

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
# MLflow 3's server starts a job runner and seven huey consumers beside it (its GenAI jobs), about 40 s of CPU per
# start that the tracking API never uses: these tests' servers run without them.
SERVER_ENV = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


class Server:
    """`mlflow server` on 127.0.0.1 over a SQLite store in `root`; stop() is kill -9 of its process group."""

    def __init__(self, root: Path, port: int):
        self.root, self.port, self.proc = root, port, None
        self.backend = fresh_sqlite_uri(root / "server.db")
        self.uri = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend, "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1", "--default-artifact-root", str(self.root / "artifacts")]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, env=SERVER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=1)
                return
            except OSError:
                time.sleep(0.3)
        self.stop()
        pytest.fail("mlflow server did not come up in 300 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def _module_server(tmp_path_factory):
    """One server for the module (each start costs seconds of CPU); the tests stop and restart it."""
    s = Server(tmp_path_factory.mktemp("mlflow_server"), free_port())
    s.start()
    yield s
    s.stop()


@pytest.fixture
def server(_module_server):
    """The module's server, running: a test that failed while it was down leaves it stopped."""
    if _module_server.proc is None or _module_server.proc.poll() is not None:
        _module_server.start()
    return _module_server


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_server_killed_and_restarted_loses_nothing(tmp_path, server, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    adapter = tmp_path / "adapter_final"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    cfg = TrackingConfig(experiment="outage", tracking_uri=server.uri, system_metrics_interval_s=None)
    t = build_tracker(cfg, rank=0, run_dir=run_dir)
    with caplog.at_level(logging.WARNING):
        run_id = t.start("r", {"task": "retrieval"}, {"optim.lr": 1e-4})
        assert run_id
        for step in range(1, 11):
            t.log_metrics({"train/loss": 1.0 / step, "train/lr": 1e-4}, step=step)
        server.stop()
        begin = time.monotonic()
        for step in range(11, 21):  # the server is down: every call returns at once
            t.log_metrics({"train/loss": 1.0 / step, "train/lr": 1e-4}, step=step)
        t.log_params({"late.param": "x"})
        t.log_artifact(adapter)
        t.log_metrics({"val/r_mean": 42.0}, step=20)
        assert time.monotonic() - begin < 5
        time.sleep(3)  # down for a while: the tracker retries with backoff meanwhile
        server.start()
        for step in range(21, 31):
            t.log_metrics({"train/loss": 1.0 / step, "train/lr": 1e-4}, step=step)
        t.finish("FINISHED")
    assert t.complete
    assert len([r for r in caplog.records if "unreachable (" in r.getMessage()]) == 1
    assert any("reachable again" in r.getMessage() for r in caplog.records)

    client = _client(server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert _steps(client, run_id, "train/loss") == list(range(1, 31))
    assert _steps(client, run_id, "train/lr") == list(range(1, 31))
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val/r_mean")] == [(20, 42.0)]
    assert run.data.params == {"optim.lr": "0.0001", "late.param": "x"}
    assert [a.path for a in client.list_artifacts(run_id, "adapter_final")] == [
        "adapter_final/adapter_model.safetensors"
    ]
    rows = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    assert len(rows) == 31 and {r["run_id"] for r in rows} == {run_id}


def test_long_outage_is_completed_by_the_sync_command(tmp_path, server, monkeypatch, capsys):
    """The server is gone past the end of training: the run stays incomplete until `tracking.sync` runs."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    cfg = TrackingConfig(
        experiment="outage", tracking_uri=server.uri, system_metrics_interval_s=None, finish_timeout_s=1.0
    )
    t = build_tracker(cfg, rank=0, run_dir=run_dir)
    run_id = t.start("r", {}, {"p": 1})
    t.log_metrics({"loss": 1.0}, step=1)
    server.stop()
    for step in range(2, 6):
        t.log_metrics({"loss": float(step)}, step=step)
    t.log_dict({"txt_r1": 50.0}, "final_metrics.json")
    t.finish("FAILED")
    assert not t.complete
    server.start()
    assert _client(server.uri).get_run(run_id).info.status == "RUNNING"

    capsys.readouterr()
    for _ in range(2):  # a second sync sends nothing twice (the command's main() in this process)
        code = sync.main([str(run_dir)])
        out = capsys.readouterr()
        assert code == 0, out.err
        assert f"MLflow run {run_id}: up to date" in out.out and "status FAILED" in out.out
    client = _client(server.uri)
    assert client.get_run(run_id).info.status == "FAILED"
    assert _steps(client, run_id, "loss") == [1, 2, 3, 4, 5]
    assert [a.path for a in client.list_artifacts(run_id)] == ["final_metrics.json"]


KILLED_WRITER = """
import os, sys
from unitrans_ds.config.schema import TrackingConfig
from unitrans_ds.tracking import build_tracker
cfg = TrackingConfig(experiment="never-reached", tracking_uri=sys.argv[2], system_metrics_interval_s=None)
t = build_tracker(cfg, rank=0, run_dir=sys.argv[1])
t.start("killed-run", {"task": "vqa"}, {"optim.lr": 0.001, "train.max_steps": None})
for step in range(1, 4):
    t.log_metrics({"train/loss": 1.0 / step}, step=step)
os.kill(os.getpid(), 9)
"""


def test_sync_backfills_a_killed_run_that_never_reached_mlflow(tmp_path, monkeypatch, capsys):
    """The process died (kill -9) while MLflow was unreachable: sync creates the run once and closes it KILLED."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    dead = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(run_dir), dead], env=env, timeout=300)
    assert proc.returncode == -9
    store = fresh_sqlite_uri(tmp_path / "later.db")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    # the sync command's main() in this process, twice; its own process runs in the test below
    codes, outs = [], []
    for _ in range(2):
        codes.append(sync.main([str(run_dir), "--tracking-uri", store]))
        outs.append(capsys.readouterr())
    assert codes == [0, 0], outs[0].err
    assert all("status KILLED" in o.out for o in outs)
    client = _client(store)
    (run,) = client.search_runs([client.get_experiment_by_name("never-reached").experiment_id])
    assert run.info.status == "KILLED" and run.info.run_name == "killed-run"
    assert run.data.params == {"optim.lr": "0.001", "train.max_steps": "null"}
    assert _steps(client, run.info.run_id, "train/loss") == [1, 2, 3]


def test_sync_of_a_folder_without_journal_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "unitrans_ds.tracking.sync", str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'mlflow_journal.jsonl'} is missing or empty: {tmp_path} is not a run folder"
    ]


def test_plain_mlflow_ui_shows_runs_logged_with_the_defaults(tmp_path, monkeypatch):
    """No tracking URI anywhere: `mlflow ui` with no arguments, started in the same folder, serves the run."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = TrackingConfig(experiment="defaults", system_metrics_interval_s=None)
    t = build_tracker(cfg, rank=0, run_dir=tmp_path / "run")
    run_id = t.start("r", {}, {"p": 1})
    t.log_metrics({"train/loss": 0.5}, step=1)
    t.log_artifact(tmp_path / "run" / METRICS_FILE)
    t.finish()
    port = free_port()
    env = {k: v for k, v in SERVER_ENV.items() if k != "MLFLOW_TRACKING_URI"}
    ui = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--port", str(port), "--workers", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        uri = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300  # a loaded machine: MLflow's server imports take a while
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "mlflow ui did not come up in 300 s"
                time.sleep(0.3)
        client = _client(uri)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.metrics == {"train/loss": 0.5}
        assert [a.path for a in client.list_artifacts(run_id)] == [METRICS_FILE]
        with urllib.request.urlopen(f"{uri}/get-artifact?path={METRICS_FILE}&run_uuid={run_id}", timeout=30) as r:
            assert json.loads(r.read().splitlines()[0])["train/loss"] == 0.5  # the UI's artifact view reads it
    finally:
        os.killpg(ui.pid, signal.SIGKILL)
        ui.wait(timeout=30)
