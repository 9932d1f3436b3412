"""BLIP's train/eval transforms and RandAugment without torchvision, on real COCO JPEGs and made-up images."""

from __future__ import annotations

import io
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unitrans_ds.data.randaugment import BLIP_OPS, FILL, RandAugment
from unitrans_ds.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    EvalTransform,
    TrainTransform,
    normalize_batch,
    random_resized_crop_box,
)

COCO = Path(__file__).parents[1] / "fixtures" / "images" / "COCO_val2014_000000262148.jpg"


def _jpeg(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_random_resized_crop_respects_scale_and_ratio():
    rng = random.Random(0)
    for _ in range(500):
        left, top, right, bottom = random_resized_crop_box(640, 480, rng)
        w, h = right - left, bottom - top
        assert left >= 0 and top >= 0 and right <= 640 and bottom <= 480
        # Rounding w and h to whole pixels moves area and ratio a little past the bounds.
        assert 0.5 * 0.99 <= w * h / (640 * 480) <= 1.0
        assert 3 / 4 * 0.99 <= w / h <= 4 / 3 * 1.01


def test_random_resized_crop_falls_back_to_a_centre_crop_with_clamped_ratio():
    left, top, right, bottom = random_resized_crop_box(1000, 10, random.Random(0))
    assert (bottom - top) == 10 and math.isclose((right - left) / 10, 4 / 3, rel_tol=0.1)
    assert left == (1000 - (right - left)) // 2


def test_train_transform_is_a_function_of_its_rng():
    data = COCO.read_bytes()
    t = TrainTransform(96)
    a, b = t(data, random.Random(7)), t(data, random.Random(7))
    c = t(data, random.Random(8))
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def _left_red_right_blue(size: int = 64) -> bytes:
    arr = np.zeros((size, size, 3), np.uint8)
    arr[:, : size // 2, 0] = 255
    arr[:, size // 2 :, 2] = 255
    return _png(arr)


def test_flip_can_be_turned_off_for_left_right_data():
    # Square image + min_scale 1: every crop is the whole image, so only the flip can move the colours.
    data = _left_red_right_blue()
    no_flip = TrainTransform(32, min_scale=1.0, hflip=False, randaugment=False)
    flip = TrainTransform(32, min_scale=1.0, hflip=True, randaugment=False)
    left_is_red = [no_flip(data, random.Random(s))[16, 2, 0] > 200 for s in range(20)]
    assert all(left_is_red)
    flipped = [flip(data, random.Random(s))[16, 2, 0] > 200 for s in range(20)]
    assert 0 < sum(flipped) < 20
    assert np.array_equal(no_flip(data, random.Random(0)), EvalTransform(32)(data))


def test_eval_transform_resizes_whole_image_to_a_square():
    data = COCO.read_bytes()
    ref = np.asarray(Image.open(COCO).convert("RGB").resize((100, 100), Image.Resampling.BICUBIC))
    assert np.array_equal(EvalTransform(100, use_draft=False)(data), ref)
    # 640x512 -> 100 allows a 2x reduced decode (320x256 >= 2 x 100): close to, not equal to, the reference.
    drafted = EvalTransform(100)(data)
    assert drafted.shape == (100, 100, 3)
    assert 0 < np.abs(drafted.astype(int) - ref).mean() < 1.5


def test_grayscale_and_png_inputs_come_out_rgb():
    gray = Image.open(COCO).convert("L")
    assert EvalTransform(40)(_jpeg(gray)).shape == (40, 40, 3)
    assert TrainTransform(40)(_png(np.asarray(Image.open(COCO))), random.Random(0)).shape == (40, 40, 3)


def test_reduced_size_decoding_is_close_to_a_full_decode_on_a_large_photo():
    big = _jpeg(Image.open(COCO).convert("RGB").resize((2560, 2048), Image.Resampling.BICUBIC))
    drafted = EvalTransform(384, use_draft=True)(big).astype(np.int16)
    full = EvalTransform(384, use_draft=False)(big).astype(np.int16)
    diff = np.abs(drafted - full)
    assert diff.mean() > 0, "draft did not kick in (outputs identical) on a 2560x2048 JPEG resized to 384"
    assert diff.mean() < 1.5, diff.mean()
    assert np.percentile(diff, 99) < 12


def test_no_reduced_decoding_when_it_would_leave_less_than_twice_the_output():
    data = COCO.read_bytes()  # 640x512 -> 384: a 2x draft would leave 320 < 768 pixels
    assert np.array_equal(EvalTransform(384, use_draft=True)(data), EvalTransform(384, use_draft=False)(data))


def _photo(size: int = 64) -> Image.Image:
    return Image.open(COCO).convert("RGB").resize((size, size))


@pytest.mark.parametrize("name", BLIP_OPS)
def test_each_op_keeps_size_and_mode(name):
    out = RandAugment(1, 5, ops=(name,), prob=1.0)(_photo(), random.Random(0))
    assert out.size == (64, 64) and out.mode == "RGB"


@pytest.mark.parametrize("name", ["Identity", "Brightness", "Sharpness"])
def test_blip_magnitude_five_makes_enhance_ops_identities(name):
    img = _photo()
    assert np.array_equal(np.asarray(RandAugment(2, 5, ops=(name,), prob=1.0)(img, random.Random(0))), np.asarray(img))


def test_brightness_at_magnitude_zero_darkens_to_a_tenth():
    img = _photo()
    out = np.asarray(RandAugment(1, 0, ops=("Brightness",), prob=1.0)(img, random.Random(0))).astype(float)
    assert abs(out.mean() - np.asarray(img).mean() * 0.1) < 1.0


def test_translate_moves_five_pixels_and_fills_grey():
    arr = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = np.asarray(RandAugment(1, 5, ops=("TranslateX",), prob=1.0)(Image.fromarray(arr), random.Random(0)))
    left_shift = np.array_equal(out[:, :-5], arr[:, 5:]) and (out[:, -5:] == FILL[0]).all()
    right_shift = np.array_equal(out[:, 5:], arr[:, :-5]) and (out[:, :5] == FILL[0]).all()
    assert left_shift or right_shift


def test_rotate_fills_corners_grey_and_autocontrast_stretches():
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    out = np.asarray(RandAugment(1, 5, ops=("Rotate",), prob=1.0)(white, random.Random(0)))
    assert tuple(out[0, 0]) == FILL and tuple(out[32, 32]) == (255, 255, 255)
    flat = (np.asarray(_photo()) // 4 + 100).astype(np.uint8)  # contrast squeezed into 100..163
    out = np.asarray(RandAugment(1, 5, ops=("AutoContrast",), prob=1.0)(Image.fromarray(flat), random.Random(0)))
    assert out.min() == 0 and out.max() >= 254  # PIL truncates 255 - epsilon


def test_each_of_two_ops_applies_with_probability_half():
    # Unchanged only when both coin flips skip: probability 1/4.
    img = _photo(32)
    aug = RandAugment(2, 5, ops=("Rotate",))
    changed = [not np.array_equal(np.asarray(aug(img, random.Random(s))), np.asarray(img)) for s in range(400)]
    assert 0.68 < np.mean(changed) < 0.82


def test_unknown_op_and_bad_magnitude_are_rejected():
    with pytest.raises(ValueError, match="Unknown RandAugment ops"):
        RandAugment(ops=("Solarise",))
    with pytest.raises(ValueError, match="magnitude"):
        RandAugment(magnitude=11)


def test_normalize_batch_matches_clip_formula_and_moves_channels():
    x = np.random.default_rng(0).integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    out = normalize_batch(x)
    ref = (torch.from_numpy(x).float() / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert out.shape == (2, 3, 4, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref.permute(0, 3, 1, 2), atol=1e-5, rtol=1e-5)
    assert normalize_batch(np.zeros((2, 3, 4, 5, 3), np.uint8)).shape == (2, 3, 3, 4, 5)
    # The CPU path (a lookup table per channel) gives the bits of the device path's two float32 operations,
    # x * (1 / (255 std)) + (-mean / std), for every level, on images, video and a non-contiguous batch.
    levels = torch.arange(256, dtype=torch.uint8).repeat(3).view(1, 1, 256, 3)  # every level in every channel
    video = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 3, 6, 7, 3), dtype=np.uint8))
    mul = torch.tensor([1.0 / (255.0 * s) for s in CLIP_STD]).view(3, 1, 1)
    add = torch.tensor([-m / s for m, s in zip(CLIP_MEAN, CLIP_STD)]).view(3, 1, 1)
    for batch in (levels, video, video[:, :, 1:5]):
        want = batch.movedim(-1, -3).float().mul_(mul).add_(add)
        assert torch.equal(normalize_batch(batch), want)
    with pytest.raises(ValueError, match="uint8"):
        normalize_batch(np.zeros((2, 4, 5, 3), np.float32))


def test_whole_pixel_translation_equals_pils_bilinear_affine():
    from unitrans_ds.data.randaugment import _affine, _translate

    # PIL's bilinear affine is the reference.
    bilinear = Image.Resampling.BILINEAR
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    for dx, dy in [(5, 0), (-5, 0), (0, 5), (0, -5), (3, -2), (50, 0)]:
        expected = np.asarray(
            img.transform(img.size, Image.Transform.AFFINE, (1, 0, dx, 0, 1, dy), bilinear, fillcolor=FILL)
        )
        assert np.array_equal(_translate(np.asarray(img), float(dx), float(dy)), expected), (dx, dy)
        assert np.array_equal(_affine(np.asarray(img), (1.0, 0.0, dx, 0.0, 1.0, dy)), expected), (dx, dy)


def test_fast_train_resize_matches_pils_bicubic():
    # TrainTransform resizes whole-pixel crops with torch's uint8 kernel; PIL's own resize is the reference.
    data = COCO.read_bytes()
    means = []
    for seed in range(6):
        fast = TrainTransform(384, randaugment=False)(data, random.Random(seed)).astype(int)
        exact = TrainTransform(384, randaugment=False, exact=True)(data, random.Random(seed)).astype(int)
        diff = np.abs(fast - exact)
        assert diff.mean() < 0.05 and diff.max() <= 8, (seed, diff.mean(), diff.max())
        means.append(diff.mean())
    assert max(means) > 0, "the fast resize did not run (outputs identical to PIL's)"


def _close_to_pil(got: np.ndarray, ref: Image.Image) -> bool:
    # cv2 rounds bilinear weights to 1/32 px and blends the grey fill into the one-pixel edge of the moved image,
    # where PIL draws a hard edge: elsewhere the two agree within one grey level.
    diff = np.abs(got.astype(int) - np.asarray(ref).astype(int)).max(-1)
    return np.quantile(diff, 0.99) <= 1 and (diff > 4).mean() < 0.01


def test_geometric_ops_move_pixels_as_pils_bilinear_transforms_do():
    # The ops run on cv2; PIL's own transform (PIL's pixel centres) is the reference.
    from unitrans_ds.data.randaugment import OPS, _affine

    img = _photo(256)
    for coeffs in [(1.0, -0.15, 0.0, 0.0, 1.0, 0.0), (1.0, 0.0, 0.0, 0.15, 1.0, 0.0), (0.9, 0.1, 7.5, -0.2, 1.1, -3.0)]:
        ref = img.transform(img.size, Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=FILL)
        assert _close_to_pil(_affine(np.asarray(img), coeffs), ref), coeffs
    for seed in range(4):
        got = OPS["Rotate"](np.asarray(img), 5.0, random.Random(seed))
        refs = [img.rotate(d, resample=Image.Resampling.BILINEAR, fillcolor=FILL) for d in (15.0, -15.0)]
        assert sum(_close_to_pil(got, r) for r in refs) == 1, seed


def test_training_jpeg_decode_gives_pils_pixels_at_every_draft_scale():
    from unitrans_ds.data.transforms import _decode_jpeg_rgb

    data = COCO.read_bytes()
    for scale in (1, 2, 4, 8):
        img = Image.open(io.BytesIO(data))
        if scale > 1:
            img.draft("RGB", (img.width // scale, img.height // scale))
        got = _decode_jpeg_rgb(data, scale)
        assert got is not None and np.array_equal(got, np.asarray(img.convert("RGB"))), scale


def test_truncated_jpeg_still_fails_in_training_as_pil_fails():
    from unitrans_ds.data.transforms import _decode_jpeg_rgb

    data = COCO.read_bytes()
    cut = data[: len(data) // 2]
    assert _decode_jpeg_rgb(cut, 1) is None  # no end-of-image marker: left to PIL
    with pytest.raises(OSError, match="truncated"):
        TrainTransform(64)(cut, random.Random(0))


def test_train_loader_crops_only_when_min_scale_is_below_one(tmp_path):
    # data.min_scale=1 (the demo default): the training image is the whole picture, as evaluation sees it, so a
    # caption's "at the top left" and "three shapes" stay true; 0.5 (BLIP) crops, at random
    from helpers.shardgen import image_sample, write_shards

    from unitrans_ds.config import load_config
    from unitrans_ds.data.loaders import train_loader_from_config

    one = image_sample(0, random.Random(0))  # four samples of one picture: every row must show all of it
    samples = [dict(one, __key__=f"img{i:05d}") for i in range(4)]
    write_shards(tmp_path / "train", samples, 4)
    whole = normalize_batch(EvalTransform(32)(one["jpg"])[None].copy())[0]

    def distances(min_scale: float) -> list[float]:
        overrides = [f"data.train_shards={tmp_path / 'train'}", "model.image_size=32", "train.micro_batch_size=4",
                     "train.global_batch_size=4", f"data.min_scale={min_scale}"]  # fmt: skip
        loader = train_loader_from_config(load_config(None, overrides), rank=0, world_size=1)
        pixels = next(iter(loader))["pixel_values"]
        return [(row - whole).abs().mean().item() for row in pixels]

    assert max(distances(1.0)) < 0.02  # the same resize up to the uint8 kernel's rounding
    assert min(distances(0.5)) > 5 * max(distances(1.0))
    with pytest.raises(Exception, match="data.min_scale"):
        load_config(None, ["data.min_scale=0"])
