"""Adapter export/import round trips, what the files hold, and mismatched loads."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import make_tiny
from helpers.adapters import _randomize_adapters
from helpers.model_io import outputs
from safetensors.torch import load_file
from transformers import BlipForImageTextRetrieval

from unitrans_ds.adapters import (
    AdapterMismatchError,
    get_state,
    load_adapter,
    prepare_model,
    save_adapter,
    save_merged_pretrained,
)
from unitrans_ds.config import MethodConfig


@pytest.mark.parametrize(
    "task,method",
    [
        ("retrieval", "unitrans"),
        ("captioning", "vcra"),
        ("vqa", "unitrans"),
        ("retrieval", "lora"),
        ("vqa", "scaling-vectors"),
    ],
)
def test_round_trip_reproduces_outputs(tmp_path, task, method):
    model = make_tiny(task)
    cfg = MethodConfig(name=method, rank=4)
    prepare_model(model, cfg)
    _randomize_adapters(model)
    if task == "retrieval":
        with torch.no_grad():
            get_state(model).temp.fill_(0.05)
    save_adapter(model, tmp_path, cfg, base_model="tiny")
    fresh = make_tiny(task)  # same seed: the same "pretrained" base
    load_adapter(fresh, tmp_path)
    want, got = outputs(model, task), outputs(fresh, task)
    for k in want:
        assert torch.equal(want[k], got[k]), f"{k} differs after reload"
    if task == "retrieval":
        assert get_state(fresh).temp.item() == pytest.approx(0.05)


def test_file_holds_only_trainable_state(tmp_path):
    model = make_tiny("retrieval")
    cfg = MethodConfig(name="unitrans", rank=4)
    report = prepare_model(model, cfg)
    save_adapter(model, tmp_path, cfg, base_model="tiny")
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert sum(t.numel() for t in tensors.values()) == report.trainable
    backbone = {n for n, _ in make_tiny("retrieval").named_parameters()}
    assert not any(k.replace("base_layer.", "") in backbone for k in tensors)
    assert all(any(tag in k for tag in (".vcra_", ".qasn_", "unitrans.")) for k in tensors)
    assert "unitrans.banks.enc.A" in tensors  # trainable shared matrices are saved ...
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["method"] == "unitrans" and meta["r"] == 4 and meta["base_model_name_or_path"] == "tiny"
    assert meta["base_model_class"] == "BlipForImageTextRetrieval" and len(meta["base_config_hash"]) == 16
    assert meta["unitrans_ds_version"] and meta["format_version"] == 2

    frozen_dir = tmp_path / "frozen"
    m2 = make_tiny("retrieval")
    cfg2 = MethodConfig(name="vcra", rank=4, train_shared=False)
    prepare_model(m2, cfg2)
    save_adapter(m2, frozen_dir, cfg2, base_model="tiny")
    assert not any(k.startswith("unitrans.banks") for k in load_file(str(frozen_dir / "adapter_model.safetensors")))
    fresh = make_tiny("retrieval")
    load_adapter(fresh, frozen_dir)  # ... frozen ones are re-created from the seed
    assert torch.equal(get_state(fresh).banks["enc"].A, get_state(m2).banks["enc"].A)


def test_mismatched_loads_name_the_mismatch(tmp_path):
    model = make_tiny("retrieval")
    cfg = MethodConfig(name="unitrans", rank=4)
    prepare_model(model, cfg)
    save_adapter(model, tmp_path, cfg, base_model="tiny")
    with pytest.raises(AdapterMismatchError, match="text.hidden_size: adapter 64, base 96"):
        load_adapter(make_tiny("retrieval", text_width=96), tmp_path)
    with pytest.raises(AdapterMismatchError, match="vision.num_hidden_layers: adapter 2, base 3"):
        load_adapter(make_tiny("retrieval", vision_layers=3), tmp_path)
    with pytest.raises(AdapterMismatchError, match="BlipForImageTextRetrieval.*BlipForQuestionAnswering"):
        load_adapter(make_tiny("vqa"), tmp_path)
    # A tampered file: a tensor missing and one of the wrong shape are both named.
    from safetensors.torch import save_file

    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    tensors.pop("unitrans.temp")
    key = next(k for k in tensors if k.endswith("vcra_b.q"))
    tensors[key] = torch.zeros(3)
    save_file(tensors, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(AdapterMismatchError) as e:
        load_adapter(make_tiny("retrieval"), tmp_path)
    assert "unitrans.temp" in str(e.value) and key in str(e.value) and "shape" in str(e.value)


def test_merged_export_is_a_plain_blip_folder(tmp_path):
    model = make_tiny("retrieval")
    cfg = MethodConfig(name="vcra+mcam", rank=4)
    prepare_model(model, cfg)
    _randomize_adapters(model)
    want = outputs(model, "retrieval")
    snapshot = copy.deepcopy(model.state_dict())
    save_merged_pretrained(model, tmp_path)
    plain = BlipForImageTextRetrieval.from_pretrained(tmp_path).eval()
    got = outputs(plain, "retrieval")
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)
    for k, v in model.state_dict().items():  # the adapted model is left unmerged afterwards
        torch.testing.assert_close(v, snapshot[k], rtol=0, atol=1e-6)
    qasn = make_tiny("retrieval")
    prepare_model(qasn, MethodConfig(name="unitrans", rank=4))
    with pytest.raises(ValueError, match="QASN"):
        save_merged_pretrained(qasn, tmp_path / "q")
