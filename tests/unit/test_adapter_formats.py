"""What an adapter folder holds: LoRA as a real PEFT adapter, VCRA with PEFT-style fields, first-format folders."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import make_tiny
from helpers.adapters import _randomize_adapters
from helpers.model_io import outputs
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn

from unitrans_ds.adapters import AdapterMismatchError, get_state, load_adapter, prepare_model, save_adapter
from unitrans_ds.config import MethodConfig


def _trained(task: str, method: MethodConfig) -> nn.Module:
    model = make_tiny(task)
    prepare_model(model, method)
    _randomize_adapters(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and "lora_B" in name:  # peft starts B at 0: move it, or LoRA is a no-op
                p.copy_(torch.randn_like(p) * 0.2)
            elif p.requires_grad and name.startswith("itm_head"):
                p.add_(torch.randn_like(p) * 0.2)
    if task == "retrieval":
        with torch.no_grad():
            get_state(model).temp.fill_(0.05)
    return model


@pytest.mark.parametrize(
    "task,unfreeze", [("retrieval", ["itm_head"]), ("captioning", []), ("vqa", [])], ids=["retrieval", "cap", "vqa"]
)
def test_lora_adapter_loads_with_peft_and_gives_the_same_outputs(tmp_path, task, unfreeze):
    method = MethodConfig(name="lora", rank=4, lora_alpha=8.0, unfreeze=unfreeze)
    model = _trained(task, method)
    save_adapter(model, tmp_path, method, base_model="org/tiny-blip", extra={"step": 3})
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8.0
    assert cfg["base_model_name_or_path"] == "org/tiny-blip"
    plain_modules = dict(make_tiny(task).named_modules())
    assert cfg["target_modules"] and all(isinstance(plain_modules[n], nn.Linear) for n in cfg["target_modules"])
    assert (cfg["modules_to_save"] or []) == unfreeze

    peft_model = PeftModel.from_pretrained(make_tiny(task), tmp_path).eval()
    want, got = outputs(model, task), outputs(peft_model, task)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=f"{k} differs under PeftModel")

    fresh = make_tiny(task)  # and our own loader reads the same folder back, temperature included
    loaded = load_adapter(fresh, tmp_path)  # the saved targets are the defaults spelled out
    assert dataclasses.replace(loaded, targets={}) == method
    assert set(loaded.targets) == set({"retrieval": "VTC", "captioning": "VD", "vqa": "VTCD"}[task])
    for k, v in outputs(fresh, task).items():
        assert torch.equal(v, want[k]), k
    if task == "retrieval":
        assert get_state(fresh).temp.item() == pytest.approx(0.05)


def test_vcra_config_has_peft_style_fields_once_and_resolved_targets(tmp_path):
    method = MethodConfig(name="unitrans", rank=4)
    model = _trained("retrieval", method)
    save_adapter(model, tmp_path, method, base_model="pretrained/tiny-blip-retrieval", extra={"step": 5})
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "pretrained/tiny-blip-retrieval"
    assert (cfg["method"], cfg["r"], cfg["step"]) == ("unitrans", 4, 5)
    plain = dict(make_tiny("retrieval").named_modules())
    assert len(cfg["target_modules"]) == 2 + 2 * 3 * 2  # ViT qkv x2 layers; q, k, v of self + cross x2 layers
    assert all(isinstance(plain[n], nn.Linear) for n in cfg["target_modules"])
    assert set(cfg["targets"]) == {"V", "T", "C"} and all(cfg["targets"].values())
    for gone in ("tensors", "rank", "model_class", "base_model", "lora_alpha", "lora_dropout"):
        assert gone not in cfg, gone
    assert not any(isinstance(v, dict) and "name" in v for v in cfg.values())  # no nested copy of the method
    vcra = MethodConfig(name="vcra", rank=4)
    save_adapter(_trained("captioning", vcra), tmp_path / "v", vcra, base_model="x")
    assert "qasn_activation" not in json.loads((tmp_path / "v" / "adapter_config.json").read_text())


def _as_first_format(folder) -> None:
    """Rewrite a folder's config as the first format wrote it (method mapping, model_class, tensor shapes)."""
    cfg = json.loads((folder / "adapter_config.json").read_text())
    method = MethodConfig(name=cfg["method"], rank=cfg["r"], targets={})
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    old = {
        "library": "unitrans_ds",
        "unitrans_ds_version": "0.1.0",
        "method": {f: getattr(method, f) for f in method.__dataclass_fields__},
        "rank": method.rank,
        "seed": method.seed,
        "targets": {},
        "model_class": cfg["base_model_class"],
        "base_model": "/abs/path/tiny",
        "base_config_hash": cfg["base_config_hash"],
        "base_architecture": cfg["base_architecture"],
        "tensors": {k: list(v.shape) for k, v in sorted(tensors.items())},
        "step": 9,
    }
    (folder / "adapter_config.json").write_text(json.dumps(old))


def test_first_format_folders_still_load(tmp_path):
    method = MethodConfig(name="unitrans", rank=4)
    model = _trained("vqa", method)
    save_adapter(model, tmp_path, method, base_model="tiny")
    _as_first_format(tmp_path)
    fresh = make_tiny("vqa")
    assert load_adapter(fresh, tmp_path).name == "unitrans"
    want = outputs(model, "vqa")
    for k, v in outputs(fresh, "vqa").items():
        assert torch.equal(v, want[k]), k


def test_foreign_peft_adapters_and_other_targets_get_one_clear_error(tmp_path):
    method = MethodConfig(name="lora", rank=4)
    save_adapter(_trained("captioning", method), tmp_path, method, base_model="x")
    save_file(load_file(str(tmp_path / "adapter_model.safetensors")), str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(AdapterMismatchError, match="PEFT LORA adapter not written by unitrans_ds.*PeftModel"):
        load_adapter(make_tiny("captioning"), tmp_path)
    vcra = MethodConfig(name="vcra", rank=4, targets={"V": r"vision_model\.encoder\.layers\.1\.self_attn"})
    save_adapter(_trained("captioning", vcra), tmp_path / "v", vcra, base_model="x")
    cfg = json.loads((tmp_path / "v" / "adapter_config.json").read_text())
    assert cfg["target_modules"][0] == "text_decoder.bert.encoder.layer.0.attention.self.key"
    assert "vision_model.encoder.layers.1.self_attn.qkv" in cfg["target_modules"]
    assert "vision_model.encoder.layers.0.self_attn.qkv" not in cfg["target_modules"]
    cfg["target_modules"].append("vision_model.encoder.layers.0.self_attn.qkv")
    (tmp_path / "v" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterMismatchError, match="adapts other modules.*layers.0.self_attn.qkv"):
        load_adapter(make_tiny("captioning"), tmp_path / "v")
