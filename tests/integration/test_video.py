"""Video end to end: real clip -> shards -> loader frames; 2-rank video retrieval and video QA runs; determinism."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from helpers.launchers import load_launcher, train_in_process
from helpers.mlflow_store import fresh_sqlite_uri
from helpers.runs import common, launch, make_shapes, ok

from unitrans_ds import make_shards
from unitrans_ds.data.loaders import build_eval_loader

ROOT = Path(__file__).resolve().parents[2]
PANCAKE = ROOT / "tests" / "fixtures" / "make_shards" / "video" / "flipping_a_pancake.mkv"


def test_real_clip_through_make_shards_and_loader_gives_8_frames_at_expected_times(tmp_path):
    ann = tmp_path / "didemo.json"
    ann.write_text(
        json.dumps(
            [{"annotation_id": 0, "description": "a pancake is flipped", "video": PANCAKE.name, "times": [[0, 1]]}]
        )
    )
    out = tmp_path / "shards"
    assert make_shards.main(
        ["--format", "didemo", "--annotations", str(ann), "--media-root", str(PANCAKE.parent), "--split", "test",
         "--frames", "16", "--out", str(out), "--no-progress"]
    ) == 0  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["frames"] == 16 and manifest["total_samples"] == 1
    loader = build_eval_loader(out, task="retrieval", image_size=32, batch_size=1, num_frames=8, video=True)
    (batch,) = list(loader)
    assert tuple(batch["pixel_values"].shape) == (1, 8, 3, 32, 32)
    times = batch["frame_times"][0].tolist()
    # 16 stored frames sit at the centres of 16 equal segments of the clip's duration D (310 frames at 30 fps); the
    # loader takes the centre of each of 8 segments of those, i.e. stored frame 2k+1, whose time is
    # (2k + 1.5) * D / 16, give or take one frame (1/30 s) for the frame on screen at that instant.
    with tarfile.open(out / "shard-000000.tar") as tar:
        meta = json.load(tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith(".json"))))
    duration = meta["duration"]
    assert abs(duration - 310 / 30) < 0.1
    for k, t in enumerate(times):
        want = (2 * k + 1.5) * duration / 16
        assert abs(t - want) <= 1 / 30 + 1e-3, f"frame {k} at {t:.3f} s, expected {want:.3f} s"
    assert times == sorted(times)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    make_shapes(root, "train", 32, 8, task_set="video")
    make_shapes(root, "val", 8, 4, task_set="video", seed=1)
    make_shapes(root, "test", 8, 4, task_set="video", seed=2)
    return root


def _video_args(clips: Path, out: Path, task: str) -> list[str]:
    return [f"task={task}", "video=true", "data.num_frames=4", "data.max_words=40", *common(clips, out, steps=2)]


@pytest.mark.slow
@pytest.mark.parametrize("task,metric", [("retrieval", "test/r_mean"), ("vqa", "test/accuracy")])
def test_two_rank_video_run_logs_metrics_and_exports(task, metric, clips, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = fresh_sqlite_uri(tmp_path / "mlflow.db")
    out = tmp_path / "run"
    ok(launch([*_video_args(clips, out, task), "tracking.experiment=video"], ranks=2, env={"MLFLOW_TRACKING_URI": uri}))
    final = json.loads((out / "final_metrics.json").read_text())
    assert metric in final, sorted(final)
    assert (out / "adapter_final" / "adapter_model.safetensors").is_file()
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("video").experiment_id])
    assert metric in run.data.metrics and run.data.tags["task"] == f"{task}-video"


@pytest.mark.slow
def test_video_evaluation_is_deterministic(clips, tmp_path):
    # Training in this process (the launcher's main); the two evaluations in two processes, this one and a fresh
    # one (another hash seed, another start), with the same thread count.
    out = tmp_path / "run"
    args = [*_video_args(clips, out, "retrieval"), "tracking.enabled=false", "data.test_shards=null"]
    assert train_in_process(args) == 0
    adapter = out / "adapter_final"
    results = []
    for i in range(2):
        res = tmp_path / f"eval{i}"
        eval_args = [
            "--config",
            str(out / "config.yaml"),
            "--adapter",
            str(adapter),
            "--split",
            "val",
            "--out",
            str(res),
        ]
        if i == 0:
            env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
            proc = subprocess.run([sys.executable, "launchers/eval.py", *eval_args], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=300)  # fmt: skip
            ok(proc)
        else:
            assert load_launcher("eval").main(eval_args) == 0
        metrics = json.loads((res / "metrics.json").read_text())
        metrics.pop("eval_seconds")  # wall time, the one entry that may differ
        results.append(metrics)
    assert results[0] == results[1]
    assert "r_mean" in json.dumps(results[0])
