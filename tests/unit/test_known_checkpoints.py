"""Named original BLIP checkpoints: stored architectures that match what the converter infers, the download error,
and `random:<name>` (the named architecture with random weights)."""

from __future__ import annotations

import pytest
import torch
from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval

from unitrans_ds.config.schema import ModelConfig
from unitrans_ds.dryrun.run import blip_shaped_tokenizer
from unitrans_ds.models.build import load_backbone
from unitrans_ds.models.convert_blip import ModelLoadError, blip_config_from_state_dict
from unitrans_ds.models.known_checkpoints import KNOWN_CHECKPOINTS, architecture, known_checkpoint
from unitrans_ds.models.signature import config_hash


@pytest.mark.parametrize("name", ["model_base.pth", "model_base_retrieval_coco.pth", "model_vqa.pth"])
def test_stored_architecture_is_what_the_converter_infers_from_its_shapes(name):
    config = architecture(name)
    with torch.device("meta"):  # shapes only: nothing is allocated
        sd = {**BlipForConditionalGeneration(config).state_dict(), **BlipForImageTextRetrieval(config).state_dict()}
    inferred = blip_config_from_state_dict(sd, pad_token_id=0, bos_token_id=30522, sep_token_id=102)
    assert config_hash(inferred) == config_hash(config)
    assert config.vision_config.image_size == KNOWN_CHECKPOINTS[name].image_size


def test_paths_and_bare_names_find_the_same_entry():
    assert known_checkpoint("pretrained/blip/model_base.pth") is known_checkpoint("model_base.pth")
    assert known_checkpoint("pretrained/blip/my_model.pth") is None


def test_an_absent_named_checkpoint_says_where_to_download_it(tmp_path):
    path = tmp_path / "blip" / "model_base.pth"
    with pytest.raises(ModelLoadError) as err:
        load_backbone(ModelConfig(init_from=str(path)), "retrieval")
    text = str(err.value)
    assert "https://storage.googleapis.com/sfr-vision-language-research/BLIP/models/model_base.pth" in text
    assert f"wget -P {path.parent}" in text and "pretrained only" in text


def test_random_init_refuses_unknown_names_and_tasks_a_checkpoint_lacks():
    with pytest.raises(ModelLoadError, match="no stored architecture for 'my_model.pth'"):
        load_backbone(ModelConfig(init_from="random:my_model.pth"), "retrieval")
    with pytest.raises(ModelLoadError, match="holds no retrieval weights; it serves vqa"):
        load_backbone(ModelConfig(init_from="random:model_vqa.pth"), "retrieval")


def test_random_init_gives_the_vit_real_weights_not_hf_s_near_zero_default(tmp_path):
    # HF's vision default (1e-10) made a random ViT-B/16 all but zero: subnormal activations, no image signal
    tokenizer = blip_shaped_tokenizer(tmp_path / "tokenizer")
    model_cfg = ModelConfig(init_from="random:model_base_retrieval_coco.pth", tokenizer=str(tokenizer))
    backbone = load_backbone(model_cfg, "retrieval")
    vit = backbone.model.vision_model
    assert 0.015 < vit.encoder.layers[0].self_attn.qkv.weight.std().item() < 0.025
    assert 0.015 < vit.embeddings.patch_embedding.weight.std().item() < 0.025
    with torch.no_grad():
        out = vit(pixel_values=torch.randn(1, 3, 224, 224)).last_hidden_state
    tiny = out.abs() < torch.finfo(torch.float32).tiny  # subnormal or zero
    assert tiny.float().mean().item() < 0.01 and out.std().item() > 0.1
