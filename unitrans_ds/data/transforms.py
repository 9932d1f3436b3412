"""BLIP's image transforms without torchvision: PIL for the pixels, uint8 until the batch is normalized.

Train (BLIP `transform_train`): random resized crop (scale 0.5..1, ratio 3/4..4/3, bicubic), horizontal flip,
RandAugment(2, 5) with BLIP's op list. Eval (BLIP `transform_test`): bicubic resize to a square. Both take the
encoded image bytes and return a uint8 array [H, W, 3]; `normalize_batch` turns a stacked batch into the float
tensor the model takes, with BLIP's CLIP mean/std.

Speed: JPEGs are decoded at a reduced size with PIL's `draft` (a DCT-domain downscale by 2, 4 or 8) only when
the region to be resized keeps at least twice the output size in both directions, so the antialiased bicubic
resize that follows still sees >= 2 source pixels per output pixel; the difference to a full decode is then a
few grey levels (see tests/test_transforms.py). Crop and resize are one call. Training decodes RGB JPEGs with
cv2 (libjpeg-turbo, the same pixels as PIL's decode at half the cost). After the decode, a training
sample stays a uint8 array (flip and RandAugment's geometric ops by cv2, as BLIP does), since each PIL <-> array
conversion is a full copy through PIL's packer.
"""

from __future__ import annotations

import io
import math
import random
import warnings

import cv2
import numpy as np
import torch
from PIL import Image

from unitrans_ds.data.randaugment import RandAugment

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Box = tuple[float, float, float, float]
_MUL = torch.tensor([1.0 / (255.0 * s) for s in CLIP_STD]).view(3, 1, 1)
_ADD = torch.tensor([-m / s for m, s in zip(CLIP_MEAN, CLIP_STD)]).view(3, 1, 1)


def random_resized_crop_box(
    width: int,
    height: int,
    rng: random.Random,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Box:
    """torchvision's `RandomResizedCrop.get_params`: (left, top, right, bottom) in source pixels.

    Ten tries at an area fraction in `scale` and a log-uniform aspect ratio in `ratio`; if none fits, the
    largest centre crop whose ratio is clamped into `ratio`.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return (left, top, left + w, top + h)
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return (left, top, left + w, top + h)


def open_image(data: bytes) -> Image.Image:
    """Open encoded image bytes lazily (header only); raises PIL's errors on garbage bytes."""
    return Image.open(io.BytesIO(data))


# cv2's flags for libjpeg's DCT-domain downscale by 1, 2, 4, 8 (the scales PIL's `draft` picks from).
_CV2_REDUCED = {
    1: 0,
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}
_CV2_RGB = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION  # PIL does not apply EXIF orientation either


def _decode_jpeg_rgb(data: bytes, scale: int) -> np.ndarray | None:
    """An RGB JPEG decoded by libjpeg-turbo through cv2 at 1/`scale` size: uint8 [h, w, 3]; None to leave it to PIL.

    Why: the pixels are those of PIL's decode (and of `draft` at the same scale: both ask libjpeg for the same
    DCT scaling; tests/test_transforms.py checks equality), at half the CPU time, since cv2 writes packed RGB
    where PIL decodes to 4 bytes a pixel and packs again for the array. Data without the end-of-image marker
    goes to PIL, which raises on a truncated file where cv2 would fill the rest with grey.
    """
    if scale not in _CV2_REDUCED or not data.endswith(b"\xff\xd9"):
        return None
    return cv2.imdecode(np.frombuffer(data, np.uint8), _CV2_REDUCED[scale] | _CV2_RGB)


def _resize_uint8(pixels: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """PIL's antialiased bicubic resize of an integer `box`, computed by torch's uint8 kernel (channels-last).

    Why: PIL's resampler is scalar fixed-point code; torch's vectorised uint8 kernel implements the same filter
    (PIL's support and coefficient rounding) about 4x faster. Outputs differ from PIL's by 0.003 grey levels on
    average, a few levels in about one pixel in 10^5 (tests/test_transforms.py).
    """
    left, top, right, bottom = box
    with warnings.catch_warnings():
        # PIL hands out a read-only array; torch warns that its tensor could write to it, and this one never does.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(pixels)
    crop = tensor[top:bottom, left:right].permute(2, 0, 1).unsqueeze(0)
    crop = crop.contiguous(memory_format=torch.channels_last)
    out = torch.nn.functional.interpolate(crop, size=(size[1], size[0]), mode="bicubic", antialias=True)
    return out[0].permute(1, 2, 0).numpy()  # channels-last memory: [H, W, 3] contiguous, no copy


def resize_region(
    img: Image.Image,
    box: Box,
    size: tuple[int, int],
    use_draft: bool = True,
    exact: bool = True,
    data: bytes | None = None,
) -> np.ndarray:
    """Bicubic-resize the `box` region of a lazily opened image to `size` (w, h): uint8 RGB [h, w, 3].

    With `use_draft`, a JPEG is decoded at 1/2, 1/4 or 1/8 scale when the region keeps >= 2x `size` pixels.
    `exact=False` lets a whole-pixel box go through torch's faster uint8 kernel (see `_resize_uint8`) and, given
    the encoded `data` of an RGB JPEG, decodes it with cv2 (the same pixels, see `_decode_jpeg_rgb`).
    """
    left, top, right, bottom = box
    out_w, out_h = size
    scale = 1
    if use_draft and img.format == "JPEG":
        # Ask for at least 2x the output inside the box; PIL picks the largest reduction that honours it.
        req_w = math.ceil(img.width * 2 * out_w / max(right - left, 1))
        req_h = math.ceil(img.height * 2 * out_h / max(bottom - top, 1))
        if req_w * 2 <= img.width and req_h * 2 <= img.height:
            full_w = img.width
            drafted = img.draft("RGB", (req_w, req_h))
            if drafted is not None:
                scale = round(full_w / drafted[1][2])
                left, top, right, bottom = left / scale, top / scale, right / scale, bottom / scale
    pixels = None
    if not exact and data is not None and img.format == "JPEG" and img.mode == "RGB":
        pixels = _decode_jpeg_rgb(data, scale)
        if pixels is not None and pixels.shape[:2] != (img.height, img.width):
            pixels = None  # not the size PIL's header and draft promise: let PIL decode (and report) it
    if pixels is None and img.mode != "RGB":
        img = img.convert("RGB")
    right, bottom = min(right, img.width), min(bottom, img.height)
    whole = (left, top, right, bottom)
    if not exact and all(float(v).is_integer() for v in whole):
        return _resize_uint8(np.asarray(img) if pixels is None else pixels, tuple(int(v) for v in whole), size)
    src = img if pixels is None else Image.fromarray(pixels)
    return np.asarray(src.resize((out_w, out_h), Image.Resampling.BICUBIC, box=(left, top, right, bottom)))


class TrainTransform:
    """Training transform: encoded bytes -> uint8 [S, S, 3]. Called per image (per frame for video).

    Args:
        image_size: output side S in pixels.
        min_scale: smallest crop area fraction (BLIP: 0.5).
        hflip: random horizontal flip with p = 0.5. BLIP flips although it swaps "left" and "right" in the
            image but not in the text; set False for data where that matters (the shapes demo).
        randaugment: apply BLIP's RandAugment(2, 5).
        use_draft: allow reduced-size JPEG decoding (see module docstring).
        exact: resize with PIL itself; the default False uses torch's uint8 kernel for the same bicubic filter
            (4x faster, a few grey levels in rare pixels; see `_resize_uint8`), fine for augmented training crops.
    """

    def __init__(
        self,
        image_size: int,
        min_scale: float = 0.5,
        hflip: bool = True,
        randaugment: bool = True,
        use_draft: bool = True,
        exact: bool = False,
    ) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if not 0 < min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
        self.image_size = image_size
        self.min_scale = min_scale
        self.hflip = hflip
        self.augment = RandAugment() if randaugment else None
        self.use_draft = use_draft
        self.exact = exact

    def __call__(self, data: bytes, rng: random.Random) -> np.ndarray:
        img = open_image(data)
        box = random_resized_crop_box(img.width, img.height, rng, scale=(self.min_scale, 1.0))
        arr = resize_region(img, box, (self.image_size, self.image_size), self.use_draft, self.exact, data)
        if self.hflip and rng.random() < 0.5:
            arr = cv2.flip(arr, 1)  # numpy's copy of a reversed view moves 3-byte pixels one byte at a time
        if self.augment is not None:
            arr = self.augment(arr, rng)
        return np.ascontiguousarray(arr)

    def __repr__(self) -> str:
        return (
            f"TrainTransform(image_size={self.image_size}, min_scale={self.min_scale}, hflip={self.hflip}, "
            f"augment={self.augment}, use_draft={self.use_draft}, exact={self.exact})"
        )


class EvalTransform:
    """Evaluation transform: encoded bytes -> uint8 [S, S, 3], a bicubic resize of the whole image (no crop)."""

    def __init__(self, image_size: int, use_draft: bool = True) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.image_size = image_size
        self.use_draft = use_draft

    def __call__(self, data: bytes, rng: random.Random | None = None) -> np.ndarray:  # noqa: ARG002 (TrainTransform's)
        img = open_image(data)
        box = (0, 0, img.width, img.height)
        return resize_region(img, box, (self.image_size, self.image_size), self.use_draft)

    def __repr__(self) -> str:
        return f"EvalTransform(image_size={self.image_size}, use_draft={self.use_draft})"


def normalize_batch(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float32 [..., 3, H, W], scaled to [0, 1] then normalized with CLIP mean/std.

    The loaders call it once per batch (images [B, H, W, 3], video [B, T, H, W, 3]) in the process that
    consumes the batches, on the tensor's device: workers hand over uint8, a quarter of the bytes, and the
    float conversion is one pass (on the GPU when the loader was given a device).
    """
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.shape[-1] != 3:
        raise ValueError(f"normalize_batch expects uint8 [..., H, W, 3], got {x.dtype} {tuple(x.shape)}")
    out = torch.empty((*x.shape[:-3], 3, *x.shape[-3:-1]), dtype=torch.float32, device=x.device)
    if x.device.type == "cpu" and x.numel():
        return _normalize_lut(x, out)
    return _normalize_ops(x, out)


def _normalize_ops(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Any device: one strided uint8 -> float copy into channels-first memory, then x * (1 / (255 std)) - mean / std
    in place (on CPU about 3x faster than converting first and making the permuted tensor contiguous after)."""
    out.copy_(x.movedim(-1, -3))
    out.mul_(_MUL.to(x.device)).add_(_ADD.to(x.device))
    return out


#: [3, 256] float32: channel c's normalized value of every uint8 level, computed with the same two float32
#: operations as the device path (level * _MUL, then + _ADD), so both paths give the same bits.
_LUT = (torch.arange(256, dtype=torch.float32).view(1, 256) * _MUL.view(3, 1)).add_(_ADD.view(3, 1)).numpy()


def _normalize_lut(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """CPU: each image's channels split into planes (uint8, cheap) and mapped through the table into `out`'s
    channel planes with OpenCV's LUT: one read and one contiguous write per value instead of a strided convert,
    a multiply and an add over the float batch (384 px, batch 16: 0.715 of their CPU time, same output;
    benchmarks/bench_normalize.py)."""
    src = x.reshape(-1, *x.shape[-3:]).contiguous().numpy()
    dst = out.view(-1, 3, *x.shape[-3:-1]).numpy()
    for i in range(len(src)):
        for c, plane in enumerate(cv2.split(src[i])):
            cv2.LUT(plane, _LUT[c], dst=dst[i, c])
    return out
