"""Photometric and RandAugment augmentations: pure functions of (RGB PIL image, rng) -> image.

- color_jitter: torchvision's ColorJitter(brightness, contrast, saturation, hue) applied with probability
  `prob` (AIMv1: (0.4, 0.4, 0.2, 0.1), p = 0.8): factors drawn uniformly, the four adjustments in a random
  order, hue shifted in HSV with uint8 wrap-around as torchvision does for PIL images.
- rand_augment: RandAugment as timm's 'rand-m9-mstd0.5-inc1' (DARL / MAE fine-tuning): `num_ops` operations
  drawn with replacement from the "increasing" set, each applied with probability `prob` at a magnitude
  drawn from N(magnitude, magnitude_std) clipped to [0, 10]. Geometric operations fill with the ImageNet
  mean colour. Works on any aspect ratio.
"""

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

_FILL = (124, 116, 104)  # ImageNet mean colour in uint8
_MAX_MAGNITUDE = 10.0


def _adjust_hue(image: Image.Image, shift: float) -> Image.Image:
    h, s, v = image.convert("HSV").split()
    hue = np.asarray(h, np.uint8) + np.uint8(round(shift * 255) % 256)  # wraps around like torchvision
    return Image.merge("HSV", (Image.fromarray(hue, "L"), s, v)).convert("RGB")


def color_jitter(
    image: Image.Image, rng: np.random.Generator, *, strength: Sequence[float], prob: float = 0.8
) -> Image.Image:
    """ColorJitter(brightness, contrast, saturation, hue) = `strength`, applied with probability `prob`."""
    if rng.random() >= prob:
        return image
    brightness, contrast, saturation, hue = (float(x) for x in strength)
    ops: list[Callable[[Image.Image], Image.Image]] = []
    if brightness > 0:
        f = rng.uniform(max(0.0, 1 - brightness), 1 + brightness)
        ops.append(lambda im, f=f: ImageEnhance.Brightness(im).enhance(f))
    if contrast > 0:
        f = rng.uniform(max(0.0, 1 - contrast), 1 + contrast)
        ops.append(lambda im, f=f: ImageEnhance.Contrast(im).enhance(f))
    if saturation > 0:
        f = rng.uniform(max(0.0, 1 - saturation), 1 + saturation)
        ops.append(lambda im, f=f: ImageEnhance.Color(im).enhance(f))
    if hue > 0:
        shift = rng.uniform(-hue, hue)
        ops.append(lambda im, shift=shift: _adjust_hue(im, shift))
    for i in rng.permutation(len(ops)):
        image = ops[i](image)
    return image


def _signed(value: float, rng: np.random.Generator) -> float:
    return value if rng.random() < 0.5 else -value


def _affine(image: Image.Image, matrix: tuple) -> Image.Image:
    return image.transform(image.size, Image.AFFINE, matrix, resample=Image.BILINEAR, fillcolor=_FILL)


def _rotate(image, level, rng):
    return image.rotate(_signed(30.0 * level, rng), resample=Image.BILINEAR, fillcolor=_FILL)


def _shear_x(image, level, rng):
    return _affine(image, (1, _signed(0.3 * level, rng), 0, 0, 1, 0))


def _shear_y(image, level, rng):
    return _affine(image, (1, 0, 0, _signed(0.3 * level, rng), 1, 0))


def _translate_x(image, level, rng):
    return _affine(image, (1, 0, _signed(0.45 * level, rng) * image.size[0], 0, 1, 0))


def _translate_y(image, level, rng):
    return _affine(image, (1, 0, 0, 0, 1, _signed(0.45 * level, rng) * image.size[1]))


def _posterize(image, level, rng):
    return ImageOps.posterize(image, max(1, 4 - int(level * 4)))


def _solarize(image, level, rng):
    return ImageOps.solarize(image, 256 - int(level * 256))


def _solarize_add(image, level, rng):
    x = np.asarray(image, np.int32)
    added = np.clip(x + int(level * 110), 0, 255)
    return Image.fromarray(np.where(x < 128, added, x).astype(np.uint8))


def _enhance(kind):
    def op(image, level, rng):
        return kind(image).enhance(1.0 + _signed(0.9 * level, rng))

    return op


RAND_AUGMENT_OPS: dict[str, Callable] = {
    "auto_contrast": lambda image, level, rng: ImageOps.autocontrast(image),
    "equalize": lambda image, level, rng: ImageOps.equalize(image),
    "invert": lambda image, level, rng: ImageOps.invert(image),
    "rotate": _rotate,
    "posterize": _posterize,
    "solarize": _solarize,
    "solarize_add": _solarize_add,
    "color": _enhance(ImageEnhance.Color),
    "contrast": _enhance(ImageEnhance.Contrast),
    "brightness": _enhance(ImageEnhance.Brightness),
    "sharpness": _enhance(ImageEnhance.Sharpness),
    "shear_x": _shear_x,
    "shear_y": _shear_y,
    "translate_x": _translate_x,
    "translate_y": _translate_y,
}


def rand_augment(
    image: Image.Image,
    rng: np.random.Generator,
    *,
    num_ops: int = 2,
    magnitude: float = 9.0,
    magnitude_std: float = 0.5,
    prob: float = 0.5,
) -> Image.Image:
    """RandAugment(num_ops, magnitude, magnitude_std) with per-operation probability `prob`."""
    names = list(RAND_AUGMENT_OPS)
    for i in rng.integers(0, len(names), num_ops):
        if rng.random() >= prob:
            continue
        m = rng.normal(magnitude, magnitude_std) if magnitude_std > 0 else magnitude
        level = min(max(float(m), 0.0), _MAX_MAGNITUDE) / _MAX_MAGNITUDE
        image = RAND_AUGMENT_OPS[names[i]](image, level, rng)
        if image.mode != "RGB":
            image = image.convert("RGB")
    return image
