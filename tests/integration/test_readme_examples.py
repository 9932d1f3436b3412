"""The README's commands and code snippets run as printed (on the committed demo models and shards)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from helpers.adapters import _randomize_adapters

from unitrans_ds.adapters import prepare_model, save_adapter
from unitrans_ds.config import load_config
from unitrans_ds.models.build import load_backbone

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _demo_eval_commands() -> list[list[str]]:
    """`deepspeed launchers/eval.py --config configs/demo_*.yaml ...` lines of the README."""
    lines = re.findall(r"^deepspeed (launchers/eval\.py --config configs/demo_\S+ .*)$", README, flags=re.M)
    return [shlex.split(line) for line in lines]


def test_readme_shows_a_demo_eval_example():
    assert _demo_eval_commands(), "the README's Evaluation section should show an eval command on a demo config"


@pytest.mark.slow
@pytest.mark.parametrize("argv", _demo_eval_commands(), ids=lambda a: a[2])
def test_readme_eval_example_runs_on_the_adapter_make_train_writes(argv, tmp_path):
    # `make train` runs the embedded default; write the adapter it would export (method at init) where the
    # example expects it, under tmp_path, then run the example's command as printed (plain python, one rank).
    i = argv.index("--adapter")
    adapter = tmp_path / argv[i + 1]
    cfg = load_config(None)
    bb = load_backbone(cfg.model, cfg.task, seed=cfg.train.seed)
    prepare_model(bb.model, cfg.method)
    save_adapter(bb.model, adapter, cfg.method, cfg.model.init_from, extra={"task": cfg.task})
    args = [*argv[:i], "--adapter", str(adapter), *argv[i + 2 :], "--out", str(tmp_path / "eval")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "eval" / "metrics.json").is_file()


def _adapters_snippet() -> str:
    section = README[README.index("### Adapters in code") :]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def _demo_configs() -> dict[str, Path | None]:
    """Run folder -> the config whose training writes it (None: the embedded default of `make train`)."""
    runs: dict[str, Path | None] = {load_config(None).train.output_dir: None}
    for path in sorted((ROOT / "configs").glob("demo_*.yaml")):
        runs[load_config(path).train.output_dir] = path
    return runs


@pytest.mark.slow
def test_readme_adapter_snippet_runs_on_hf_blip_with_demo_adapters(tmp_path, monkeypatch):
    code = _adapters_snippet()
    # what the snippet expects to find: the demo image, the pretrained folders and the adapters demo training writes
    with tarfile.open(ROOT / "shards/demo/image_b/test/shard-000000.tar") as tar:
        jpg = next(m for m in tar if m.name.endswith(".jpg"))
        (tmp_path / "scene.jpg").write_bytes(tar.extractfile(jpg).read())
    (tmp_path / "pretrained").symlink_to(ROOT / "pretrained")
    runs = _demo_configs()
    adapters = re.findall(r'load_adapter\(model, "([^"]+)"\)', code)
    assert len(adapters) == 3
    for adapter in adapters:
        cfg = load_config(runs[str(Path(adapter).parent)])
        bb = load_backbone(cfg.model, cfg.task, seed=cfg.train.seed)
        prepare_model(bb.model, cfg.method)
        _randomize_adapters(bb.model)
        save_adapter(bb.model, tmp_path / adapter, cfg.method, cfg.model.init_from)
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})
    caption, answer, p_match = printed.getvalue().strip().splitlines()
    assert caption.startswith("a picture of") and len(caption.split()) > 3 and answer
    assert 0.0 <= float(p_match) <= 1.0
