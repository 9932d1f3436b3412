"""Bad input gets one line naming the key or file and what to do, exit status 2, from rank 0 only."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from helpers.launchers import train_in_process

from unitrans_ds import make_shards
from unitrans_ds.config import ConfigError, build_config
from unitrans_ds.config.schema import ModelConfig
from unitrans_ds.models.build import load_backbone
from unitrans_ds.models.convert_blip import ModelLoadError

ROOT = Path(__file__).resolve().parents[2]


def _train_launcher():
    spec = importlib.util.spec_from_file_location("train_launcher", ROOT / "launchers" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "override,needle",
    [
        ("optim.lr=-1e-3", "`optim.lr` must be a positive number, got -0.001"),
        ("optim.lr=.nan", "`optim.lr` must be a positive number, got nan"),
        ("optim.betas=[0.9]", "`optim.betas` must be two numbers in [0, 1)"),
        ("data.num_workers=-1", "`data.num_workers` must be >= 0"),
        ("optim.warmup_steps=-5", "`optim.warmup_steps` must be >= 0"),
        ("model.image_size=40", "must be a multiple of `model.tiny.patch_size` (16)"),
    ],
)
def test_bad_values_are_refused_naming_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        build_config({"model": {"init_from": "tiny"}}, [override])
    assert needle in str(err.value)
    assert _train_launcher().one_line(str(err.value)).count("\n") == 0


def test_a_wrong_type_is_reported_once():
    with pytest.raises(ConfigError) as err:
        build_config({}, ["optim.lr=fast"])
    assert str(err.value).count("optim.lr") == 1


def test_resume_does_not_swallow_an_override_and_overrides_may_follow_options():
    parse = _train_launcher().parse_args
    args = parse(["--resume", "method.name=vcra", "--config", "c.yaml", "optim.lr=1e-4"])
    assert args.resume == "auto" and args.overrides == ["method.name=vcra", "optim.lr=1e-4"]
    args = parse(["train.max_steps=3", "--resume", str(ROOT), "method.rank=4"])
    assert args.resume == str(ROOT) and args.overrides == ["train.max_steps=3", "method.rank=4"]


def test_zero_shard_manifest_and_output_dir_that_is_a_file(tmp_path):
    launcher = _train_launcher()
    shards = tmp_path / "train"
    assert make_shards.main(["--format", "shapes", "--domain", "b", "--split", "train", "--num-samples", "4", "--shard-size", "4",
                             "--out", str(shards), "--no-progress"]) == 0  # fmt: skip
    manifest = json.loads((shards / "manifest.json").read_text())
    (shards / "manifest.json").write_text(json.dumps({**manifest, "shards": [], "total_samples": 0}))
    cfg = build_config({"data": {"train_shards": str(shards), "val_shards": None, "test_shards": None}})
    with pytest.raises(ConfigError, match=r"data.train_shards: .*manifest.json lists no shards"):
        launcher.check_inputs(cfg)
    (shards / "manifest.json").write_text(json.dumps(manifest))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cfg = build_config({"data": {"train_shards": str(shards), "val_shards": None, "test_shards": None},
                        "train": {"output_dir": str(a_file)}})  # fmt: skip
    with pytest.raises(ConfigError, match="train.output_dir: .* is a file, not a folder"):
        launcher.check_inputs(cfg)


def test_corrupted_weights_name_the_file(tmp_path):
    src = ROOT / "pretrained" / "scenes" / "tiny-blip-retrieval"
    bad = tmp_path / "blip"
    shutil.copytree(src, bad)
    (bad / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match=r"model\.safetensors.*corrupted or cut short"):
        load_backbone(ModelConfig(init_from=str(bad)), "retrieval")
    with pytest.raises(ModelLoadError, match="model.init_from='/nonexistent/blip'"):
        load_backbone(ModelConfig(init_from="/nonexistent/blip"), "retrieval")


@pytest.mark.parametrize(
    "args,needle",
    [
        (["trian.epochs=2"], "unknown key `trian`"),
        (["optim.lr=fast"], "`optim.lr` must be a number"),
        (["train.micro_batch_size=3", "train.global_batch_size=8"], "global_batch_size"),
        (["data.train_shards=/nonexistent/shards"], "/nonexistent/shards holds no manifest.json"),
    ],
)
def test_bad_configs_fail_with_one_clear_message(args, needle, tmp_path, capsys):
    # The launcher's main() in this process: an exception it let through would fail the test here, as a traceback
    # would in a shell. Its own processes (exit status, one line from rank 0): tests/integration/test_launcher_errors.py
    assert train_in_process([*args, f"train.output_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.startswith("error:") and err.count("\n") == 1, err
    assert "Traceback" not in err
