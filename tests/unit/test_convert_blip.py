"""The original-BLIP converter: a tiny HF model written out in the ORIGINAL key layout loads back bit-exactly.

The inverse mapping below is written from Salesforce/BLIP's module definitions (models/vit.py: VisionTransformer
with patch_embed.proj, cls_token, pos_embed, blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm;
models/med.py: BertModel / BertLMHeadModel, whose names HF kept), not by running the converter backwards.
"""

from __future__ import annotations

import argparse
import logging

import pytest
import torch
from transformers import BlipForConditionalGeneration

from unitrans_ds.config.schema import ModelConfig, TinyModelConfig
from unitrans_ds.models import (
    ModelLoadError,
    convert_blip_state_dict,
    convert_with_report,
    demo_tokenizer,
    load_backbone,
    task_model_class,
    tiny_blip_config,
)
from unitrans_ds.models.convert_blip import hf_key, main

# Widths are multiples of 64 so BLIP's head convention (width/64) gives 2 heads: head splitting is exercised.
SIZES = TinyModelConfig(vision_width=128, vision_heads=2, text_width=128, text_heads=2, vision_layers=2, text_layers=2)
IMAGE = 32

VIT_TOP = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    "norm.weight": "post_layernorm.weight",
    "norm.bias": "post_layernorm.bias",
}
VIT_BLOCK = {
    "norm1": "layer_norm1",
    "attn.qkv": "self_attn.qkv",
    "attn.proj": "self_attn.projection",
    "norm2": "layer_norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def original_names(num_vision_layers: int) -> dict[str, str]:
    """HF vision name -> original `visual_encoder.*` name, enumerated from the original ViT's modules."""
    names = {f"vision_model.{hf}": f"visual_encoder.{orig}" for orig, hf in VIT_TOP.items()}
    for i in range(num_vision_layers):
        for orig, hf in VIT_BLOCK.items():
            for p in ("weight", "bias"):
                names[f"vision_model.encoder.layers.{i}.{hf}.{p}"] = f"visual_encoder.blocks.{i}.{orig}.{p}"
    return names


def to_original_layout(hf_sd: dict[str, torch.Tensor], num_vision_layers: int) -> dict[str, torch.Tensor]:
    vit = original_names(num_vision_layers)
    out = {}
    for key, value in hf_sd.items():
        if key.startswith("vision_model."):
            out[vit.pop(key)] = value.clone()  # KeyError = a HF vision key the original ViT has no module for
        else:  # med.py's BertModel / BertLMHeadModel and the heads carry the same names in HF
            out[key] = value.clone()
    assert not vit, f"original ViT modules with no HF tensor: {sorted(vit)}"
    return out


def reference_model(task: str, seed: int = 0):
    config = tiny_blip_config(SIZES, image_size=IMAGE)
    config.vision_config.layer_norm_eps = 1e-6  # the original ViT's LayerNorm eps
    torch.manual_seed(seed)
    model = task_model_class(task)(config).eval()
    # HF's init leaves LayerNorms at 1/0 and the ViT near zero; random values make every misplaced tensor visible.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


EXTRAS = {  # what original retrieval/pretrain checkpoints carry beside the model weights
    "visual_encoder_m.blocks.0.attn.qkv.weight": torch.zeros(384, 128),
    "text_encoder_m.encoder.layer.0.attention.self.query.weight": torch.zeros(128, 128),
    "vision_proj_m.weight": torch.zeros(32, 128),
    "image_queue": torch.zeros(32, 57600),
    "text_queue": torch.zeros(32, 57600),
    "idx_queue": torch.zeros(1, 57600, dtype=torch.long),
    "ptr_queue": torch.zeros(1, dtype=torch.long),
    "temp": torch.tensor(0.07),
    "text_encoder.embeddings.position_ids": torch.arange(64).expand(1, -1),
}


def write_original(tmp_path, model, name="model.pth", drop=(), wrap=True):
    sd = to_original_layout(model.state_dict(), SIZES.vision_layers)
    sd.update({k: v for k, v in EXTRAS.items()})
    for k in drop:
        del sd[k]
    path = tmp_path / name
    torch.save({"model": sd, "epoch": 5} if wrap else sd, path)
    return path


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(2, 3, IMAGE, IMAGE, generator=g)
    ids = torch.randint(7, len(demo_tokenizer()), (2, 9), generator=g)
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return pixels, ids, mask


@torch.no_grad()
def outputs(model, task: str) -> list[torch.Tensor]:
    pixels, ids, mask = inputs()
    if task == "retrieval":
        itm = model(input_ids=ids, pixel_values=pixels, attention_mask=mask, use_itm_head=True).itm_score
        itc = model(input_ids=ids, pixel_values=pixels, attention_mask=mask, use_itm_head=False).itm_score
        return [itm, itc]
    if task == "captioning":
        return [model(pixel_values=pixels, input_ids=ids, attention_mask=mask).logits]
    out = model(input_ids=ids, pixel_values=pixels, attention_mask=mask, labels=ids[:, :5])
    return [out.loss, out.decoder_logits if hasattr(out, "decoder_logits") else out[0]]


@pytest.mark.parametrize("task", ["retrieval", "captioning", "vqa"])
def test_original_checkpoint_reproduces_hf_model(tmp_path, caplog, task):
    ref = reference_model(task)
    path = write_original(tmp_path, ref)
    with caplog.at_level(logging.INFO, logger="unitrans_ds.models.build"):
        bb = load_backbone(ModelConfig(init_from=str(path), image_size=IMAGE), task)
    assert type(bb.model) is task_model_class(task)
    assert not bb.needs_interpolation
    got = bb.model.state_dict()
    assert got.keys() == ref.state_dict().keys()
    for key, value in ref.state_dict().items():
        assert torch.equal(got[key], value), key
    for a, b in zip(outputs(ref, task), outputs(bb.model, task)):
        assert torch.equal(a, b)
    # inferred sizes match the model that wrote the checkpoint
    vc, tc = bb.model.config.vision_config, bb.model.config.text_config
    assert (vc.hidden_size, vc.num_hidden_layers, vc.num_attention_heads, vc.image_size) == (128, 2, 2, IMAGE)
    assert (tc.hidden_size, tc.num_hidden_layers, tc.num_attention_heads, tc.vocab_size) == (
        128,
        2,
        2,
        len(demo_tokenizer()),
    )
    assert "dropped 9 keys" in caplog.text
    assert "visual_encoder_m.blocks.0.attn.qkv.weight" in caplog.text and "image_queue" in caplog.text


def test_missing_backbone_key_is_named(tmp_path):
    ref = reference_model("retrieval")
    key = "text_encoder.encoder.layer.1.crossattention.self.key.weight"
    path = write_original(tmp_path, ref, drop=[key])
    with pytest.raises(ModelLoadError, match=key.replace(".", r"\.")):
        load_backbone(ModelConfig(init_from=str(path), image_size=IMAGE), "retrieval")


def test_missing_vision_key_is_named_with_hf_name(tmp_path):
    ref = reference_model("captioning")
    path = write_original(tmp_path, ref, drop=["visual_encoder.blocks.1.norm2.bias"])
    with pytest.raises(ModelLoadError, match=r"vision_model\.encoder\.layers\.1\.layer_norm2\.bias"):
        load_backbone(ModelConfig(init_from=str(path), image_size=IMAGE), "captioning")


def test_captioning_checkpoint_cannot_serve_retrieval(tmp_path):
    path = write_original(tmp_path, reference_model("captioning"))
    lacking = set(reference_model("retrieval").state_dict()) - set(reference_model("captioning").state_dict())
    text_encoder = sum(k.startswith("text_encoder.") for k in lacking)
    with pytest.raises(ModelLoadError) as err:
        load_backbone(ModelConfig(init_from=str(path), image_size=IMAGE), "retrieval")
    assert f"lacks {len(lacking)} weights" in str(err.value)
    assert f"text_encoder.* ({text_encoder})" in str(err.value) and "itm_head.* (2)" in str(err.value)


def test_pretrain_style_checkpoint_serves_every_task(tmp_path):
    """model_base.pth holds encoder, decoder and heads; each task class takes its own part of it."""
    ret, vqa = reference_model("retrieval"), reference_model("vqa", seed=3)
    sd = {**vqa.state_dict(), **ret.state_dict()}  # vision + text_encoder from retrieval, decoder from vqa
    path = tmp_path / "model_base.pth"
    torch.save({"model": to_original_layout(sd, SIZES.vision_layers)}, path)
    for task in ("retrieval", "captioning", "vqa"):
        got = load_backbone(ModelConfig(init_from=str(path), image_size=IMAGE), task).model.state_dict()
        for key, value in got.items():
            assert torch.equal(value, sd[key]), (task, key)


def test_image_size_differs_from_checkpoint(tmp_path):
    path = write_original(tmp_path, reference_model("retrieval"), wrap=False)  # a bare state dict, no wrapper
    bb = load_backbone(ModelConfig(init_from=str(path), image_size=64), "retrieval")
    assert bb.needs_interpolation and bb.model.config.vision_config.image_size == IMAGE
    pixels = torch.randn(1, 3, 64, 64)
    ids = torch.tensor([[2, 20, 30, 3]])
    with torch.no_grad():
        out = bb.model(input_ids=ids, pixel_values=pixels, interpolate_pos_encoding=True)
    assert out.itm_score.shape == (1, 2)


def test_key_rules():
    assert (
        hf_key("visual_encoder.blocks.11.attn.proj.weight")
        == "vision_model.encoder.layers.11.self_attn.projection.weight"
    )
    assert hf_key("visual_encoder.norm.bias") == "vision_model.post_layernorm.bias"
    assert (
        hf_key("text_encoder.bert.encoder.layer.0.output.dense.bias")
        == "text_encoder.encoder.layer.0.output.dense.bias"
    )
    for unused in (
        "visual_encoder_m.blocks.0.attn.qkv.weight",
        "text_encoder.cls.predictions.bias",  # ALBEF's MLM head
        "text_encoder.pooler.dense.weight",
        "visual_encoder.blocks.0.adapter_after_attn.down.weight",  # adapter forks
        "temp",
    ):
        assert hf_key(unused) is None, unused
    conv = convert_with_report(
        {"module.itm_head.weight": torch.zeros(2, 8), "image_queue": torch.zeros(1)}, "retrieval"
    )
    assert list(conv.state_dict) == ["itm_head.weight"] and conv.dropped == ["image_queue"]
    assert convert_blip_state_dict({"itm_head.weight": torch.zeros(2, 8)}, "captioning") == {}


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "with_args.pth"
    torch.save({"model": {"temp": torch.tensor(0.07)}, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(ModelLoadError, match="weights_only"):
        load_backbone(ModelConfig(init_from=str(path)), "retrieval")


def test_non_square_position_grid(tmp_path):
    sd = to_original_layout(reference_model("captioning").state_dict(), SIZES.vision_layers)
    sd["visual_encoder.pos_embed"] = sd["visual_encoder.pos_embed"][:, :4]
    path = tmp_path / "odd.pth"
    torch.save(sd, path)
    with pytest.raises(ModelLoadError, match="not a square grid"):
        load_backbone(ModelConfig(init_from=str(path)), "captioning")


def test_cli_writes_a_loadable_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--checkpoint" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(tmp_path / "absent.pth"), "--task", "vqa", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 1 and "absent.pth does not exist" in capsys.readouterr().err
    ref = reference_model("captioning")
    path = write_original(tmp_path, ref)
    out = tmp_path / "hf"
    main(["--checkpoint", str(path), "--task", "captioning", "--out", str(out)])
    assert (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file()
    bb = load_backbone(ModelConfig(init_from=str(out), image_size=IMAGE), "captioning")
    assert bb.newly_initialized == []
    for a, b in zip(outputs(ref, "captioning"), outputs(bb.model, "captioning")):
        assert torch.equal(a, b)


def test_cli_converts_a_blip_vocabulary_checkpoint_without_its_tokenizer(tmp_path, monkeypatch, capsys):
    """Offline, bert-base-uncased cannot be fetched: the weights still convert, with BLIP's token ids."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    config = tiny_blip_config(SIZES, image_size=IMAGE, vocab_size=30524, bos_token_id=30522, sep_token_id=102)
    ref = BlipForConditionalGeneration(config).eval()
    path = tmp_path / "model_base_caption.pth"
    torch.save({"model": to_original_layout(ref.state_dict(), SIZES.vision_layers)}, path)
    with pytest.raises(ModelLoadError, match="bert-base-uncased"):  # the trainer needs a tokenizer
        load_backbone(ModelConfig(init_from=str(path), image_size=IMAGE), "captioning")
    out = tmp_path / "hf"
    main(["--checkpoint", str(path), "--task", "captioning", "--out", str(out)])
    assert "no tokenizer saved" in capsys.readouterr().out
    assert not (out / "tokenizer_config.json").exists()
    got = BlipForConditionalGeneration.from_pretrained(out)
    tc = got.config.text_config
    assert (tc.vocab_size, tc.pad_token_id, tc.bos_token_id, tc.sep_token_id) == (30524, 0, 30522, 102)
    assert all(torch.equal(v, got.state_dict()[k]) for k, v in ref.state_dict().items())


def test_blip_base_sizes_are_inferred_from_shapes():
    """BLIP-base shapes (built on the meta device: no memory) infer to the published BLIP-base configuration."""
    from transformers import BlipConfig

    from unitrans_ds.models import blip_config_from_state_dict

    with torch.device("meta"):
        full = task_model_class("vqa")(BlipConfig(text_config={"num_attention_heads": 12}, vision_config={}))
    sd = {**full.state_dict(), "vision_proj.weight": torch.empty(256, 768, device="meta")}
    hf = convert_with_report(to_original_layout(sd, 12), "vqa").state_dict
    config = blip_config_from_state_dict(hf, pad_token_id=0, bos_token_id=30522, sep_token_id=102)
    v, t = config.vision_config, config.text_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.intermediate_size) == (768, 12, 12, 3072)
    assert (v.image_size, v.patch_size, v.layer_norm_eps) == (384, 16, 1e-6)
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.intermediate_size) == (768, 12, 12, 3072)
    assert (t.vocab_size, t.max_position_embeddings, t.encoder_hidden_size) == (30524, 512, 768)
    assert config.image_text_hidden_size == 256


def test_learned_temperature_is_the_starting_temperature(tmp_path):
    """BLIP's learned `temp` survives the conversion (config.json) and starts the prepared model's ITC
    temperature; a backbone without one (an HF hub checkpoint) starts at BLIP's initial 0.07."""
    from unitrans_ds.adapters import get_state, prepare_model
    from unitrans_ds.config.schema import MethodConfig

    ref = reference_model("retrieval")
    sd = to_original_layout(ref.state_dict(), SIZES.vision_layers)
    sd.update({**EXTRAS, "temp": torch.tensor(0.0123)})
    path = tmp_path / "model.pth"
    torch.save({"model": sd}, path)
    out = tmp_path / "hf"
    main(["--checkpoint", str(path), "--task", "retrieval", "--out", str(out)])
    for source in (path, out):
        bb = load_backbone(ModelConfig(init_from=str(source), image_size=IMAGE), "retrieval")
        prepare_model(bb.model, MethodConfig(name="unitrans", rank=4))
        assert get_state(bb.model).temp.item() == pytest.approx(0.0123)
    plain = task_model_class("retrieval")(tiny_blip_config(SIZES, image_size=IMAGE))
    prepare_model(plain, MethodConfig(name="unitrans", rank=4))
    assert get_state(plain).temp.item() == pytest.approx(0.07)
