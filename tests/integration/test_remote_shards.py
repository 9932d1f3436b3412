"""Shards read from where WebDataset users keep them: a real HTTP server, an S3-compatible server (moto), pipe:.

Both servers run on 127.0.0.1 on free ports, started and stopped here; the loaders must give what they give for
the same shards in a local folder.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.ports import free_port
from helpers.shardgen import make_image_shards

from unitrans_ds.data.loaders import build_eval_loader, build_train_loader
from unitrans_ds.data.manifest import read_manifest
from unitrans_ds.evaluation.vqa import answer_list_from_split

ROOT = Path(__file__).resolve().parents[2]
SIZE = 32


def _serve(cmd: list[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited with status {proc.returncode}") from None
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{cmd} did not listen on port {port} within 60 s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Path:
    """12 images x 2 captions x 2 questions in 3 shards of 4, under <root>/split/."""
    root = tmp_path_factory.mktemp("remote")
    make_image_shards(root / "split", n=12, per_shard=4, captions=2, questions=2)
    return root / "split"


@pytest.fixture(scope="module")
def http_url(local) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(local.parent)]
    proc = _serve(cmd, port)
    yield f"http://127.0.0.1:{port}/split"
    _stop(proc)


@pytest.fixture(scope="module")
def s3_url(local) -> Iterator[str]:
    pytest.importorskip("s3fs")
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    proc = _serve([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port)
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        s3.create_bucket(Bucket="shards")
        for f in sorted(local.iterdir()):
            s3.upload_file(str(f), "shards", f"demo/split/{f.name}")
        yield "s3://shards/demo/split"
    _stop(proc)


def _eval_items(location) -> list[tuple[str, tuple[str, ...]]]:
    loader = build_eval_loader(location, task="retrieval", image_size=SIZE, batch_size=5)
    return [(i, tuple(c)) for b in loader for i, c in zip(b["id"], b["captions"])]


def _train_texts(location, num_workers: int = 0) -> list[str]:
    loader = build_train_loader(
        location, task="retrieval", image_size=SIZE, micro_batch_size=4, seed=3, num_workers=num_workers
    )
    return [t for b in loader for t in b["text"]]


def test_http_shards_load_like_the_local_folder(local, http_url):
    m = read_manifest(http_url)
    assert m.folder == http_url and [s.path for s in m.shards][0] == f"{http_url}/shard-000000.tar"
    assert _eval_items(http_url) == _eval_items(local)
    assert _train_texts(http_url) == _train_texts(local)
    assert answer_list_from_split(http_url) == answer_list_from_split(local)  # VQA's answer list, streamed


def test_s3_shards_load_like_the_local_folder_also_in_workers(local, s3_url):
    assert read_manifest(s3_url).total_samples == 12
    assert _eval_items(s3_url) == _eval_items(local)
    # three shards over three DataLoader worker processes, each opening its s3 objects itself
    assert sorted(_train_texts(s3_url, num_workers=3)) == sorted(_train_texts(local, num_workers=3))


def test_pipe_shards_load_like_the_local_folder(local):
    location = f"pipe:cat {local}/{{name}}"
    assert _eval_items(location) == _eval_items(local)


def test_unreachable_manifests_fail_in_one_line(local, http_url, s3_url, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/split"
    cases = {
        http_url + "/nothing-here": "does not exist",
        dead: "cannot read",
        s3_url + "/nothing-here": "manifest.json",
        f"pipe:cat {tmp_path}/missing/{{name}}": "exited with status 1",
    }
    for location, why in cases.items():
        with pytest.raises(FileNotFoundError) as e:
            read_manifest(location)
        msg = str(e.value)
        assert why in msg and "manifest.json" in msg and "\n" not in msg, msg
    with pytest.raises(ValueError, match=r"needs \{name\} where the file name goes"):
        read_manifest(f"pipe:cat {local}/manifest.json")


def test_train_launcher_names_the_key_of_an_unreachable_split(http_url):
    dead = f"http://127.0.0.1:{free_port()}/train"
    proc = subprocess.run(
        [sys.executable, "launchers/train.py", f"data.train_shards={http_url}", f"data.val_shards={dead}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data.val_shards: the shards' manifest cannot be read")
