"""Building the backbone from `tiny`, a local folder and a hub name (offline here), and the tokenizer helpers."""

from __future__ import annotations

import logging
import time

import pytest
import torch
from transformers import BertTokenizer

from unitrans_ds.config.schema import ModelConfig, TinyModelConfig
from unitrans_ds.models import (
    ModelLoadError,
    bos_token_id,
    config_hash,
    demo_tokenizer,
    enc_token_id,
    ensure_blip_tokens,
    load_backbone,
    resolve_tokenizer,
    task_model_class,
)

IMAGE = 32


def tiny_cfg(**kwargs) -> ModelConfig:
    return ModelConfig(init_from="tiny", image_size=IMAGE, **kwargs)


def batch(tokenizer, image_size: int = IMAGE):
    g = torch.Generator().manual_seed(0)
    text = tokenizer(["a red circle", "two blue squares on the left"], padding=True, return_tensors="pt")
    return torch.randn(2, 3, image_size, image_size, generator=g), text.input_ids, text.attention_mask


@torch.no_grad()
def forward(model, task: str, tokenizer, image_size: int = IMAGE, **kw) -> torch.Tensor:
    pixels, ids, mask = batch(tokenizer, image_size)
    if task == "retrieval":
        return model(input_ids=ids, pixel_values=pixels, attention_mask=mask, use_itm_head=True, **kw).itm_score
    if task == "captioning":
        return model(pixel_values=pixels, input_ids=ids, attention_mask=mask, **kw).logits
    return model(input_ids=ids, pixel_values=pixels, attention_mask=mask, labels=ids, **kw).loss


@pytest.mark.parametrize("task", ["retrieval", "captioning", "vqa"])
def test_tiny_builds_each_task_class(task):
    bb = load_backbone(tiny_cfg(), task)
    assert type(bb.model) is task_model_class(task) and bb.task == task and bb.source == "tiny"
    assert not bb.needs_interpolation and bb.newly_initialized == [] and not bb.model.training
    assert bb.model.config.text_config.vocab_size == len(bb.tokenizer)
    out = forward(bb.model, task, bb.tokenizer)
    assert torch.isfinite(out).all()
    if task == "retrieval":
        assert out.shape == (2, 2)


def test_tiny_init_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = load_backbone(tiny_cfg(), "vqa", seed=7).model.state_dict()
    assert torch.equal(torch.rand(1), expected_next)
    b = load_backbone(tiny_cfg(), "vqa", seed=7).model.state_dict()
    c = load_backbone(tiny_cfg(), "vqa", seed=8).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@torch.no_grad()
def test_a_tiny_vit_starts_with_weights_that_pass_the_image_on():
    # HF's BlipVisionConfig initialises with std 1e-10: the ViT was all zeros and its output the same for any image
    model = load_backbone(tiny_cfg(), "captioning").model
    for name in ("embeddings.patch_embedding.weight", "encoder.layers.0.self_attn.qkv.weight"):
        std = model.vision_model.state_dict()[name].std().item()
        assert 0.01 < std < 0.04, (name, std)
    pixels = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(0))
    out = model.vision_model(pixel_values=pixels).last_hidden_state[:, 1:]
    assert (out[0] - out[1]).abs().mean() > 0.1 * out.abs().mean()


def test_config_hash_tracks_architecture_only():
    base = load_backbone(tiny_cfg(), "retrieval")
    assert base.config_hash == load_backbone(tiny_cfg(), "retrieval", seed=5).config_hash
    assert len(base.config_hash) == 16
    deeper = load_backbone(tiny_cfg(tiny=TinyModelConfig(text_layers=3)), "retrieval")
    larger = load_backbone(ModelConfig(init_from="tiny", image_size=48), "retrieval")
    assert len({base.config_hash, deeper.config_hash, larger.config_hash}) == 3
    # provenance fields do not count
    config = base.model.config
    config._name_or_path = "/somewhere/else"
    config.architectures = ["BlipForConditionalGeneration"]
    assert config_hash(config) == base.config_hash


@pytest.mark.parametrize("task", ["retrieval", "captioning", "vqa"])
def test_local_folder_round_trip(tmp_path, task):
    src = load_backbone(tiny_cfg(), task, seed=3)
    src.model.save_pretrained(tmp_path)
    src.tokenizer.save_pretrained(tmp_path)
    got = load_backbone(ModelConfig(init_from=str(tmp_path), image_size=IMAGE), task)
    assert type(got.model) is task_model_class(task) and got.newly_initialized == []
    assert got.config_hash == src.config_hash and got.source == str(tmp_path.resolve())
    assert got.tokenizer("a red circle").input_ids == src.tokenizer("a red circle").input_ids
    assert enc_token_id(got.tokenizer) == enc_token_id(src.tokenizer)
    assert torch.equal(forward(src.model, task, src.tokenizer), forward(got.model, task, got.tokenizer))


def test_folder_of_another_task_reports_new_weights(tmp_path, caplog):
    cap = load_backbone(tiny_cfg(), "captioning", seed=1)
    cap.model.save_pretrained(tmp_path)  # no tokenizer files: the demo tokenizer is found by vocabulary size
    with caplog.at_level(logging.WARNING, logger="unitrans_ds.models.build"):
        got = load_backbone(ModelConfig(init_from=str(tmp_path), image_size=IMAGE), "retrieval")
    assert type(got.model) is task_model_class("retrieval")
    assert "NEWLY INITIALISED" in caplog.text and "itm_head" in caplog.text
    assert {"itm_head.weight", "vision_proj.weight", "text_encoder.embeddings.word_embeddings.weight"} <= set(
        got.newly_initialized
    )
    assert not any(k.startswith("vision_model.") for k in got.newly_initialized)
    src, dst = cap.model.state_dict(), got.model.state_dict()
    assert all(torch.equal(src[k], dst[k]) for k in dst if k.startswith("vision_model."))
    assert len(got.tokenizer) == len(demo_tokenizer())


def test_image_size_other_than_checkpoint(tmp_path):
    load_backbone(tiny_cfg(), "retrieval").model.save_pretrained(tmp_path)
    got = load_backbone(ModelConfig(init_from=str(tmp_path), image_size=64), "retrieval")
    assert got.needs_interpolation
    out = forward(got.model, "retrieval", got.tokenizer, image_size=64, interpolate_pos_encoding=True)
    assert out.shape == (2, 2)


@pytest.fixture
def no_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path


def test_hub_name_offline_mode_fails_fast_and_says_what_to_do(no_hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as err:
        load_backbone(ModelConfig(init_from="Salesforce/blip-itm-base-coco"), "retrieval")
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert "'Salesforce/blip-itm-base-coco'" in msg and "offline mode" in msg
    assert "huggingface-cli download Salesforce/blip-itm-base-coco" in msg
    assert "model.init_from" in msg and "HF_HOME" in msg


def test_hub_unreachable_fails_fast(no_hub_cache, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens there
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="huggingface-cli download Salesforce/blip-vqa-base"):
        load_backbone(ModelConfig(init_from="Salesforce/blip-vqa-base"), "vqa")
    assert time.monotonic() - start < 10


def test_bad_sources_are_named():
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_backbone(ModelConfig(init_from="/no/such/model_base.pth"), "retrieval")
    with pytest.raises(ModelLoadError, match="not `tiny`, an existing folder"):
        load_backbone(ModelConfig(init_from="./no/such/folder"), "retrieval")
    with pytest.raises(ValueError, match="task must be one of"):
        load_backbone(tiny_cfg(), "nlvr")


def test_special_token_helpers(tmp_path):
    demo = demo_tokenizer()
    assert demo.convert_ids_to_tokens([enc_token_id(demo), bos_token_id(demo)]) == ["[ENC]", "[DEC]"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    plain = BertTokenizer(str(tmp_path / "vocab.txt"))
    with pytest.raises(ModelLoadError, match=r"no \[ENC\] token"):
        enc_token_id(plain)
    with pytest.raises(ModelLoadError, match=r"no \[DEC\] token"):
        bos_token_id(plain)
    # BLIP's init_tokenizer order: [DEC] then [ENC], right after the BERT vocabulary
    tok = ensure_blip_tokens(plain, vocab_size=len(vocab) + 2)
    assert (bos_token_id(tok), enc_token_id(tok)) == (len(vocab), len(vocab) + 1)
    assert tok.bos_token == "[DEC]" and tok("a red circle").input_ids == [2, 5, 6, 7, 3]
    with pytest.raises(ModelLoadError, match="only 9 rows"):
        ensure_blip_tokens(BertTokenizer(str(tmp_path / "vocab.txt")), vocab_size=len(vocab) + 1)


def test_tokenizer_resolution_for_checkpoints(no_hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert len(resolve_tokenizer(ModelConfig(), len(demo_tokenizer()))) == len(demo_tokenizer())
    with pytest.raises(ModelLoadError, match="bert-base-uncased"):
        resolve_tokenizer(ModelConfig(), 30524)
    with pytest.raises(ModelLoadError, match="set `model.tokenizer`"):
        resolve_tokenizer(ModelConfig(), 1234)
    folder = no_hub_cache / "tok"
    demo_tokenizer().save_pretrained(folder)
    tok = resolve_tokenizer(ModelConfig(tokenizer=str(folder)), len(demo_tokenizer()))
    assert enc_token_id(tok) == enc_token_id(demo_tokenizer())


def test_gradient_checkpointing_flag():
    bb = load_backbone(tiny_cfg(gradient_checkpointing=True), "captioning")
    flag = getattr(bb.model, "is_activation_checkpointing", None)
    assert flag if flag is not None else bb.model.is_gradient_checkpointing
