"""BLIP folders we write load with `BlipProcessor.from_pretrained`, which preprocesses as our loaders do."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny
from helpers.adapters import _randomize_adapters
from PIL import Image
from transformers import AutoTokenizer, BlipConfig, BlipForImageTextRetrieval, BlipProcessor

from unitrans_ds.adapters import prepare_model, save_merged_pretrained
from unitrans_ds.config import MethodConfig
from unitrans_ds.data.transforms import CLIP_MEAN, CLIP_STD, EvalTransform, normalize_batch
from unitrans_ds.models import demo_tokenizer
from unitrans_ds.models.processor import main as processor_main
from unitrans_ds.models.processor import save_processor

ROOT = Path(__file__).resolve().parents[2]
PRETRAINED = sorted((ROOT / "pretrained").glob("*/tiny-blip-*"))


def _image(size: tuple[int, int] = (50, 37), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _ours(img: Image.Image, image_size: int) -> torch.Tensor:
    """What our eval loader feeds the model for `img`: bicubic resize, then CLIP normalisation."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return normalize_batch(np.array(EvalTransform(image_size)(buf.getvalue()))[None])


def _check_processor(folder: Path, image_size: int, tokenizer) -> None:
    proc = BlipProcessor.from_pretrained(folder)
    ip = proc.image_processor
    assert (ip.size["height"], ip.size["width"]) == (image_size, image_size)
    assert tuple(ip.image_mean) == CLIP_MEAN and tuple(ip.image_std) == CLIP_STD
    img = _image()
    out = proc(images=img, text="a red circle on the left", return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, image_size, image_size)
    # the same pixels as our loaders up to one grey level of rounding (HF rescales after PIL's uint8 resize)
    torch.testing.assert_close(out["pixel_values"], _ours(img, image_size), rtol=0, atol=1.01 / (255 * min(CLIP_STD)))
    assert out["input_ids"][0].tolist() == tokenizer("a red circle on the left")["input_ids"]


@pytest.mark.parametrize("folder", PRETRAINED, ids=lambda p: p.name)
def test_committed_pretrained_folders_load_as_blip_processors(folder):
    config = BlipConfig.from_pretrained(folder)
    _check_processor(folder, config.vision_config.image_size, AutoTokenizer.from_pretrained(folder))


def test_merged_export_round_trips_through_blip_processor(tmp_path):
    model = make_tiny("retrieval")
    prepare_model(model, MethodConfig(name="vcra", rank=4))
    _randomize_adapters(model)
    save_merged_pretrained(model, tmp_path)  # no tokenizer given: the demo vocabulary's is resolved
    assert (tmp_path / "preprocessor_config.json").is_file()
    _check_processor(tmp_path, model.config.vision_config.image_size, demo_tokenizer())
    # a HF user's five lines give the adapted model's scores
    proc = BlipProcessor.from_pretrained(tmp_path)
    plain = BlipForImageTextRetrieval.from_pretrained(tmp_path).eval()
    inputs = proc(images=_image(), text="a red circle", return_tensors="pt")
    with torch.no_grad():
        want = model(**inputs, use_itm_head=True).itm_score
        got = plain(**inputs, use_itm_head=True).itm_score
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_folder_without_tokenizer_is_refused_and_the_cli_completes_old_folders(tmp_path, capsys):
    config = make_tiny("captioning").config
    with pytest.raises(ValueError, match="no tokenizer files"):
        save_processor(tmp_path / "empty", config, None)
    old = tmp_path / "old"
    shutil.copytree(PRETRAINED[0], old)
    (old / "preprocessor_config.json").unlink()
    assert processor_main([str(old)]) == 0
    _check_processor(old, 64, AutoTokenizer.from_pretrained(old))
    with pytest.raises(SystemExit) as e:
        processor_main([str(tmp_path / "nowhere")])
    assert e.value.code == 2 and "no config.json" in capsys.readouterr().err
