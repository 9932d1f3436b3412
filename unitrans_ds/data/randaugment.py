"""BLIP's RandAugment (`transform/randaugment.py`, `RandomAugment(2, 5, augs=[...])`) on PIL images, without cv2.

BLIP samples `num_ops` op names with replacement and applies each with probability 0.5 at a fixed magnitude
(levels out of 10). Its list for image-text tasks is the ten ops below. The level-to-argument rules are BLIP's:
enhance factor `level/10 * 1.8 + 0.1` (exactly 1.0 at magnitude 5, so Brightness and Sharpness are identities
at BLIP's setting and cost nothing here), shear `level/10 * 0.3`, translate `level/10 * 10` pixels, rotation
`level/10 * 30` degrees, each with a random sign, filled with grey (128, 128, 128). Geometric ops use bilinear
sampling, as BLIP's cv2 `warpAffine` does.

Randomness comes from the `random.Random` passed in, so the loader can make every sample's augmentation a
function of (seed, epoch, rank, worker, position); that is what makes a resumed epoch replay exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

MAX_LEVEL = 10.0
TRANSLATE_CONST = 10.0
FILL = (128, 128, 128)

BLIP_OPS = (
    "Identity",
    "AutoContrast",
    "Brightness",
    "Sharpness",
    "Equalize",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
)


def _signed(value: float, rng: random.Random) -> float:
    return -value if rng.random() > 0.5 else value


def _enhance(enhancer: type) -> Callable[[Image.Image, float, random.Random], Image.Image]:
    def op(img: Image.Image, level: float, _rng: random.Random) -> Image.Image:  # the signature of every op
        factor = level / MAX_LEVEL * 1.8 + 0.1
        if abs(factor - 1.0) < 1e-9:  # the identity, BLIP's default magnitude 5
            return img
        return enhancer(img).enhance(factor)

    return op


def _affine(img: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    # PIL maps output to input pixels; coefficients below are the inverse of BLIP's cv2 forward matrices.
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=FILL)


def _shear_x(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    shear = _signed(level / MAX_LEVEL * 0.3, rng)
    return _affine(img, (1.0, -shear, 0.0, 0.0, 1.0, 0.0))


def _shear_y(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    shear = _signed(level / MAX_LEVEL * 0.3, rng)
    return _affine(img, (1.0, 0.0, 0.0, -shear, 1.0, 0.0))


def _shift(img: Image.Image, dx: int, dy: int) -> Image.Image:
    """out(x, y) = img(x + dx, y + dy), grey outside: a whole-pixel translation, exactly what bilinear
    sampling gives for integer offsets, at a tenth of the cost of PIL's affine transform."""
    src = np.asarray(img)
    out = np.empty_like(src)
    out[...] = FILL
    h, w = src.shape[:2]
    if abs(dx) < w and abs(dy) < h:
        out[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)] = src[
            max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)
        ]
    return Image.fromarray(out)


def _translate(img: Image.Image, dx: float, dy: float) -> Image.Image:
    if float(dx).is_integer() and float(dy).is_integer():
        return _shift(img, int(dx), int(dy))
    return _affine(img, (1.0, 0.0, dx, 0.0, 1.0, dy))


def _translate_x(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    return _translate(img, _signed(level / MAX_LEVEL * TRANSLATE_CONST, rng), 0.0)


def _translate_y(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    return _translate(img, 0.0, _signed(level / MAX_LEVEL * TRANSLATE_CONST, rng))


def _rotate(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    # BLIP draws the sign with `random() < 0.5`, unlike shear/translate; the distribution is the same.
    degrees = level / MAX_LEVEL * 30.0
    if rng.random() < 0.5:
        degrees = -degrees
    return img.rotate(degrees, resample=Image.Resampling.BILINEAR, fillcolor=FILL)


OPS: dict[str, Callable[[Image.Image, float, random.Random], Image.Image]] = {
    "Identity": lambda img, _level, _rng: img,
    "AutoContrast": lambda img, _level, _rng: ImageOps.autocontrast(img),
    "Equalize": lambda img, _level, _rng: ImageOps.equalize(img),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
    "Rotate": _rotate,
}


class RandAugment:
    """Apply `num_ops` ops drawn with replacement from `ops`, each with probability `prob`, at `magnitude`.

    Input and output are RGB PIL images of the same size. Defaults are BLIP's `RandomAugment(2, 5, ...)`.
    """

    def __init__(
        self, num_ops: int = 2, magnitude: float = 5.0, ops: tuple[str, ...] = BLIP_OPS, prob: float = 0.5
    ) -> None:
        unknown = [name for name in ops if name not in OPS]
        if unknown:
            raise ValueError(f"Unknown RandAugment ops {unknown}; known: {sorted(OPS)}")
        if not 0 <= magnitude <= MAX_LEVEL:
            raise ValueError(f"RandAugment magnitude must be in [0, {MAX_LEVEL}], got {magnitude}")
        if num_ops < 0:
            raise ValueError(f"RandAugment num_ops must be >= 0, got {num_ops}")
        self.num_ops = num_ops
        self.magnitude = float(magnitude)
        self.ops = tuple(ops)
        self.prob = prob

    def __call__(self, img: Image.Image, rng: random.Random) -> Image.Image:
        # Draw all op names first, then the coin flips, as BLIP does (choice of N, then one flip per op).
        names = [rng.choice(self.ops) for _ in range(self.num_ops)]
        for name in names:
            if rng.random() > self.prob:
                continue
            img = OPS[name](img, self.magnitude, rng)
        return img

    def __repr__(self) -> str:
        return f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude}, ops={list(self.ops)})"
