"""BLIP's RandAugment (`transform/randaugment.py`, `RandomAugment(2, 5, augs=[...])`) on uint8 arrays.

BLIP samples `num_ops` op names with replacement and applies each with probability 0.5 at a fixed magnitude
(levels out of 10). Its list for image-text tasks is the ten ops below. The level-to-argument rules are BLIP's:
enhance factor `level/10 * 1.8 + 0.1` (exactly 1.0 at magnitude 5, so Brightness and Sharpness are identities
at BLIP's setting and cost nothing here), shear `level/10 * 0.3`, translate `level/10 * 10` pixels, rotation
`level/10 * 30` degrees, each with a random sign, filled with grey (128, 128, 128). Geometric ops use bilinear
sampling through cv2's `warpAffine`, as BLIP does: three times faster than PIL's scalar affine transform (the
costliest step of a training sample), with PIL's geometry (pixel centres at +0.5) kept, so an op moves pixels as
PIL's `transform`/`rotate` would; values differ from PIL's bilinear by cv2's 1/32-pixel weight rounding.

The ops work on uint8 [H, W, 3] arrays, as the training transform hands them over (no PIL round trip per op);
AutoContrast and Equalize, and the enhance ops away from magnitude 5, go through PIL's own `ImageOps` and
`ImageEnhance`.

Randomness comes from the `random.Random` passed in, so the loader can make every sample's augmentation a
function of (seed, epoch, rank, worker, position); that is what makes a resumed epoch replay exactly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

# One thread: the loader already runs one transform per worker process, and cv2's own pool would oversubscribe
# the cores the DataLoader splits between workers (more CPU per image, not less).
cv2.setNumThreads(1)

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


Op = Callable[[np.ndarray, float, random.Random], np.ndarray]


def _signed(value: float, rng: random.Random) -> float:
    return -value if rng.random() > 0.5 else value


def _through_pil(fn: Callable[[Image.Image], Image.Image]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda arr: np.asarray(fn(Image.fromarray(np.ascontiguousarray(arr))))


def _enhance(enhancer: type) -> Op:
    def op(arr: np.ndarray, level: float, _rng: random.Random) -> np.ndarray:
        factor = level / MAX_LEVEL * 1.8 + 0.1
        if abs(factor - 1.0) < 1e-9:  # the identity, BLIP's default magnitude 5
            return arr
        return _through_pil(lambda img: enhancer(img).enhance(factor))(arr)

    return op


def _affine(arr: np.ndarray, coeffs: tuple[float, ...]) -> np.ndarray:
    """PIL's `img.transform(size, AFFINE, coeffs, BILINEAR, fillcolor=FILL)`, computed by cv2.

    `coeffs` (a, b, c, d, e, f) map an output pixel to its source, as PIL's do (the inverse of BLIP's cv2
    forward matrices). PIL samples at pixel centres (x + 0.5); cv2 at integer x: shifting c and f by half the
    matrix's deviation from the identity gives PIL's geometry in cv2's coordinates.
    """
    a, b, c, d, e, f = coeffs
    m = np.array([[a, b, c + 0.5 * (a + b - 1)], [d, e, f + 0.5 * (d + e - 1)]], dtype=np.float64)
    h, w = arr.shape[:2]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(
        np.ascontiguousarray(arr), m, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=FILL
    )


def _shear_x(arr: np.ndarray, level: float, rng: random.Random) -> np.ndarray:
    shear = _signed(level / MAX_LEVEL * 0.3, rng)
    return _affine(arr, (1.0, -shear, 0.0, 0.0, 1.0, 0.0))


def _shear_y(arr: np.ndarray, level: float, rng: random.Random) -> np.ndarray:
    shear = _signed(level / MAX_LEVEL * 0.3, rng)
    return _affine(arr, (1.0, 0.0, 0.0, -shear, 1.0, 0.0))


def _shift(src: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """out(x, y) = src(x + dx, y + dy), grey outside: a whole-pixel translation, exactly what bilinear
    sampling gives for integer offsets, at a fraction of the cost of an affine warp."""
    out = np.empty(src.shape, np.uint8)
    out[...] = FILL
    h, w = src.shape[:2]
    if abs(dx) < w and abs(dy) < h:
        out[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)] = src[
            max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)
        ]
    return out


def _translate(arr: np.ndarray, dx: float, dy: float) -> np.ndarray:
    if float(dx).is_integer() and float(dy).is_integer():
        return _shift(arr, int(dx), int(dy))
    return _affine(arr, (1.0, 0.0, dx, 0.0, 1.0, dy))


def _translate_x(arr: np.ndarray, level: float, rng: random.Random) -> np.ndarray:
    return _translate(arr, _signed(level / MAX_LEVEL * TRANSLATE_CONST, rng), 0.0)


def _translate_y(arr: np.ndarray, level: float, rng: random.Random) -> np.ndarray:
    return _translate(arr, 0.0, _signed(level / MAX_LEVEL * TRANSLATE_CONST, rng))


def _rotate(arr: np.ndarray, level: float, rng: random.Random) -> np.ndarray:
    # BLIP draws the sign with `random() < 0.5`, unlike shear/translate; the distribution is the same.
    degrees = level / MAX_LEVEL * 30.0
    if rng.random() < 0.5:
        degrees = -degrees
    # PIL's `Image.rotate(degrees)` about the centre, same size: its inverse matrix, applied by `_affine`.
    h, w = arr.shape[:2]
    rad = -math.radians(degrees)
    cos, sin = round(math.cos(rad), 15), round(math.sin(rad), 15)
    cx, cy = w / 2.0, h / 2.0
    return _affine(arr, (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy))


OPS: dict[str, Op] = {
    "Identity": lambda arr, _level, _rng: arr,
    "AutoContrast": lambda arr, _level, _rng: _through_pil(ImageOps.autocontrast)(arr),
    "Equalize": lambda arr, _level, _rng: _through_pil(ImageOps.equalize)(arr),
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

    Takes a uint8 [H, W, 3] array (any strides; the training transform's) or an RGB PIL image, and returns the
    same kind, of the same size. Defaults are BLIP's `RandomAugment(2, 5, ...)`.
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

    def __call__(self, img: np.ndarray | Image.Image, rng: random.Random) -> np.ndarray | Image.Image:
        arr = np.asarray(img) if isinstance(img, Image.Image) else img
        # Draw all op names first, then the coin flips, as BLIP does (choice of N, then one flip per op).
        names = [rng.choice(self.ops) for _ in range(self.num_ops)]
        for name in names:
            if rng.random() > self.prob:
                continue
            arr = OPS[name](arr, self.magnitude, rng)
        return Image.fromarray(np.ascontiguousarray(arr)) if isinstance(img, Image.Image) else arr

    def __repr__(self) -> str:
        return f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude}, ops={list(self.ops)})"
