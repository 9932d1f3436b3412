"""Command lines: `--help` documents every config key from the schema, and every command spells its flags one
way (underscores, as DeepSpeed and HF do) while accepting the hyphenated spelling."""

from __future__ import annotations

import importlib.util
import re
import runpy
import sys
from pathlib import Path

import pytest

from unitrans_ds.cli import ArgumentParser
from unitrans_ds.config.help import config_keys
from unitrans_ds.make_shards import build_parser

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = [
    ["launchers/train.py"],
    ["launchers/eval.py"],
    ["-m", "unitrans_ds.make_shards"],
    ["-m", "unitrans_ds.models.convert_blip"],
    ["-m", "unitrans_ds.models.processor"],
    ["-m", "benchmarks.transfer.pretrain"],
    ["-m", "benchmarks.transfer"],
    ["-m", "unitrans_ds.tracking.sync"],
    *[[str(p.relative_to(ROOT))] for p in sorted((ROOT / "benchmarks").glob("bench_*.py"))],
]


def _launcher(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_launcher", ROOT / "launchers" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _help(cmd: list[str], capsys, monkeypatch) -> str:
    """`cmd --help` run in this process (as `python cmd --help` would, without paying the imports again)."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [cmd[-1], "--help"])
    monkeypatch.setattr(sys, "path", [str(ROOT), *sys.path])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        if cmd[0] == "-m":
            runpy.run_module(cmd[1], run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(str(ROOT / cmd[0]), run_name="__main__")
    assert e.value.code in (0, None)
    return capsys.readouterr().out


def test_train_help_lists_every_config_key_with_its_help_and_default(capsys, monkeypatch):
    out = _help(["launchers/train.py"], capsys, monkeypatch)
    keys = config_keys()
    assert len(keys) > 70
    flat = re.sub(r"\s+", " ", out)
    for key, text, default in keys:
        assert f"\n  {key} = {default}\n" in out, key
        assert text and " ".join(text.split()) in flat, key
    assert "  data.train_shards = shards/demo/image_b/train" in out and "  method.targets = {}" in out
    assert "  model.tokenizer = null" in out and "  optim.betas = [0.9, 0.999]" in out


def test_hyphenated_flags_are_aliases_of_the_underscore_spelling():
    train = _launcher("train")
    for argv in (["--ds-config", "x.json"], ["--ds_config", "x.json"], ["--ds-config=x.json"]):
        assert train.parse_args(argv).ds_config == "x.json"
    args = build_parser().parse_args(["--format", "shapes", "--out", "o", "--media-root=m", "--num-samples", "3"])
    assert (str(args.media_root), args.num_samples) == ("m", 3)
    p = ArgumentParser(prog="t")
    p.add_argument("--a_b", default=None)
    p.add_argument("rest", nargs="*")
    assert p.parse_args(["--a-b", "1", "--", "--a-b"]) == p.parse_args(["--a_b", "1", "--", "--a-b"])
    assert p.parse_args(["--", "--a-b"]).rest == ["--a-b"]  # after `--` nothing is rewritten
    with pytest.raises(SystemExit):
        p.parse_args(["--c-d", "1"])  # an unknown flag stays unknown


def _option_lines(help_text: str) -> list[str]:
    return [line for line in help_text.splitlines() if re.match(r"^ {2}-", line)]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c[-1])
def test_every_command_declares_underscore_flags_only(cmd, capsys, monkeypatch):
    # the option list of --help: its invocation column (prose and help text may mention the accepted aliases)
    invocations = [re.split(r"\s{2,}", line.strip())[0] for line in _option_lines(_help(cmd, capsys, monkeypatch))]
    flags = [f for inv in invocations for f in re.findall(r"--[a-z][\w-]*", inv)]
    assert flags and not [f for f in flags if "-" in f[2:]], f"hyphenated flags in {cmd} --help: {flags}"


def test_readme_shows_master_port_for_a_busy_29500():
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^deepspeed --master_port \d+ launchers/train\.py", readme, flags=re.M)
    assert "EADDRINUSE" in readme
