"""Image transforms: pure functions of (image, rng: np.random.Generator) -> image, on RGB PIL images
(PIL resizes without copies to and from numpy; `np.asarray(image)` is uint8 [H, W, 3]).

Geometry (S = image_size, P = patch_size, N = max_tokens):
- native_aspect_ratio_resize: about S*S pixels at the image's own width/height, then a central crop to
  multiples of P (NARAIM). At most N patches.
- fit_to_token_budget: the largest aspect-preserving patch grid with at most N patches (as NaFlex), or
  with upscale=False at most the image's own patches. With data.token_budgets each example draws its own
  N (draw_token_budget, with_token_budget).
- random_crop_native: NARAIM's crop (area fraction in crop_scale, log-uniform width/height in crop_ratio),
  not squashed; keeps at least S*S source pixels, else the whole image. Follow it with a sizing transform.
- random_resized_crop: AIM training, the crop squashed to S x S.
- resize_shorter_center_crop: AIM evaluation, shorter side to 256*S/224, then the central S x S.
- horizontal_flip: mirrors with probability flip_prob.
- color_jitter, rand_augment: photometric / RandAugment augmentations (naraim.data.augment).

Resampling ('resample'): 'box_bilinear' (PIL BOX when shrinking, BILINEAR when enlarging) or 'bicubic'
(PIL BICUBIC, antialiased when shrinking; the NARAIM reference's and AIM's). native_aspect_ratio_resize's
grid: 'exact' (scale S/sqrt(h*w), then floor) or 'reference' (the NARAIM code: height int(S*sqrt(h/w)),
width int(S*S/height)); its crop: 'center' (the reference code) or 'top_left' (the paper's text).
"""

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from naraim.data.augment import color_jitter, rand_augment

Transform = Callable[[Image.Image, np.random.Generator], Image.Image]
TRANSFORM_NAMES = (
    "native_aspect_ratio_resize",
    "fit_to_token_budget",
    "random_crop_native",
    "random_resized_crop",
    "resize_shorter_center_crop",
    "horizontal_flip",
    "color_jitter",
    "rand_augment",
)
RANDOM_TRANSFORMS = (
    "random_crop_native",
    "random_resized_crop",
    "horizontal_flip",
    "color_jitter",
    "rand_augment",
)
RESAMPLES = ("box_bilinear", "bicubic")
NATIVE_GRIDS = ("exact", "reference")
NATIVE_CROPS = ("center", "top_left")


def _resize_box(
    image: Image.Image,
    size_hw: tuple[int, int],
    box: tuple[float, float, float, float],
    resample: str = "box_bilinear",
) -> Image.Image:
    """Resizes the source region box=(x0, y0, x1, y1) (pixels, floats allowed) to size_hw=(h, w).

    'box_bilinear': shrinking uses area averaging (PIL's BOX filter, like OpenCV's INTER_AREA: antialiased
    and about a third cheaper than PIL's antialiased bilinear), enlarging bilinear interpolation. 'bicubic':
    PIL's BICUBIC (antialiased when shrinking). Resizing a box gives the pixels of resizing the whole image
    to the matching scale and cropping: PIL places the filter at the same source positions.
    """
    h, w = size_hw
    iw, ih = image.size
    x0, y0, x1, y1 = box  # clamped: rounding may reach a fraction of a pixel outside the image
    box = (max(0.0, x0), max(0.0, y0), min(float(iw), x1), min(float(ih), y1))
    if resample == "bicubic":
        return image.resize((w, h), Image.BICUBIC, box=box)
    shrink = w <= box[2] - box[0] and h <= box[3] - box[1]
    return image.resize((w, h), Image.BOX if shrink else Image.BILINEAR, box=box)


def _exact_grid(h: int, w: int, image_size: int, patch_size: int, max_tokens: int) -> tuple[int, int, float]:
    """(rows, cols, scale): the image scaled by `scale` to about image_size**2 pixels, floored to patches.

    An image so elongated that its shorter side would fall below one patch gets one patch across, and the
    part of its longer side that fits max_tokens patches.
    """
    scale = image_size / math.sqrt(h * w)
    clamped = scale < patch_size / min(h, w)
    if clamped:
        scale = patch_size / min(h, w)
    rows = max(1, math.floor(h * scale / patch_size + 1e-6))  # floor: rows * cols <= (S / P)**2
    cols = max(1, math.floor(w * scale / patch_size + 1e-6))
    if clamped and rows * cols > max_tokens:
        if rows >= cols:
            rows = max(1, max_tokens // cols)
        else:
            cols = max(1, max_tokens // rows)
    return rows, cols, scale


def reference_resize_shape(h: int, w: int, image_size: int) -> tuple[int, int]:
    """(height, width) the NARAIM reference resizes an h x w image to before cropping to patches.

    Its float32 arithmetic: height = int(S * float32(sqrt(h / w))), width = int(S*S / float32(height)).
    """
    sqrt_ratio = np.float32(math.sqrt(h / w))
    height = int(np.float32(image_size) * sqrt_ratio)
    width = int(np.float32(image_size * image_size) / np.float32(max(height, 1)))
    return height, width


def native_aspect_ratio_resize(
    image: Image.Image,
    rng: np.random.Generator,
    *,
    image_size: int,
    patch_size: int,
    max_tokens: int,
    resample: str = "box_bilinear",
    grid: str = "exact",
    crop: str = "center",
) -> Image.Image:
    """About image_size**2 pixels, about the same width/height, cropped to multiples of patch_size ('center'
    or 'top_left'); at most max_tokens patches. grid 'exact' or 'reference': see the module docstring (an
    image too elongated for the reference's formula to give one patch across uses 'exact')."""
    del rng
    w, h = image.size
    rh, rw = reference_resize_shape(h, w, image_size) if grid == "reference" else (0, 0)
    if min(rh, rw) >= patch_size:  # the reference resizes to rw x rh, then crops
        rows, cols = rh // patch_size, rw // patch_size
        sy, sx = h / rh, w / rw
        ch, cw = rows * patch_size * sy, cols * patch_size * sx
        y0 = (rh - rows * patch_size) // 2 * sy if crop == "center" else 0.0
        x0 = (rw - cols * patch_size) // 2 * sx if crop == "center" else 0.0
    else:
        rows, cols, scale = _exact_grid(h, w, image_size, patch_size, max_tokens)
        ch, cw = rows * patch_size / scale, cols * patch_size / scale
        y0, x0 = ((h - ch) / 2, (w - cw) / 2) if crop == "center" else (0.0, 0.0)
    box = (x0, y0, x0 + cw, y0 + ch)
    return _resize_box(image, (rows * patch_size, cols * patch_size), box, resample)


def _budget_grid(short: int, long: int, max_tokens: int) -> tuple[int, int, float]:
    """(short-side patches, long-side patches, long-side source pixels kept) of the budget grid."""
    r = np.arange(1, max_tokens + 1)
    c = np.maximum(1, np.rint(r * (long / short))).astype(np.int64)
    fits = r * c <= max_tokens
    if not fits.any():  # longer than max_tokens:1 -> one patch across, central part of the long side
        return 1, max_tokens, float(short * max_tokens)
    best = int(np.argmax(np.where(fits, r * c, 0)))
    return int(r[best]), int(c[best]), float(long)


def fit_to_token_budget(
    image: Image.Image,
    rng: np.random.Generator,
    *,
    patch_size: int,
    max_tokens: int,
    resample: str = "box_bilinear",
    upscale: bool = True,
) -> Image.Image:
    """Resizes to the largest rows x cols patch grid with rows*cols <= max_tokens and cols/rows ~ W/H;
    upscale=False caps the grid at the image's own (H // P) * (W // P) patches (never enlarged past them)."""
    del rng
    w, h = image.size
    if not upscale:
        max_tokens = min(max_tokens, max(1, (h // patch_size) * (w // patch_size)))
    if w >= h:
        rows, cols, kept = _budget_grid(h, w, max_tokens)
        box = ((w - kept) / 2, 0.0, (w + kept) / 2, float(h))
    else:
        cols, rows, kept = _budget_grid(w, h, max_tokens)
        box = (0.0, (h - kept) / 2, float(w), (h + kept) / 2)
    return _resize_box(image, (rows * patch_size, cols * patch_size), box, resample)


BUDGET_SAMPLINGS = ("uniform", "log_uniform")


def draw_token_budget(rng: np.random.Generator, budgets: Sequence[int], sampling: str) -> int:
    """One image's token budget: 'uniform' picks one of `budgets` with equal probability, 'log_uniform' an
    integer log-uniform between the smallest and the largest of them."""
    if sampling == "uniform":
        return int(budgets[int(rng.integers(len(budgets)))])
    lo, hi = min(budgets), max(budgets)
    return int(min(hi, max(lo, round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))))


def with_token_budget(transforms: Sequence[Transform], budget: int) -> tuple[Transform, ...]:
    """`transforms` with every fit_to_token_budget bound to `budget` patches instead."""
    return tuple(
        functools.partial(t, max_tokens=budget) if getattr(t, "func", None) is fit_to_token_budget else t
        for t in transforms
    )


CROP_CHOICES = ("first", "last")


def _sample_crop(
    h: int,
    w: int,
    rng: np.random.Generator,
    scale: Sequence[float],
    ratio: Sequence[float],
    min_pixels: int,
    choice: str = "first",
) -> tuple[int, int, int, int] | None:
    """RandomResizedCrop's sampling: (y0, x0, ch, cw) of a crop with >= min_pixels pixels, or None.

    Up to 10 (area, aspect) draws; choice 'first' keeps the first that fits (torchvision), 'last' makes all
    10 draws and keeps the last that fits (the NARAIM reference's RandomCrop and RandomResizedCrop, which
    cannot leave their loop early in graph mode)."""
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    kept = None
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        r = math.exp(rng.uniform(log_lo, log_hi))
        cw, ch = round(math.sqrt(target * r)), round(math.sqrt(target / r))
        if 0 < cw <= w and 0 < ch <= h and cw * ch >= min_pixels:
            y0 = int(rng.integers(0, h - ch + 1))
            x0 = int(rng.integers(0, w - cw + 1))
            kept = (y0, x0, ch, cw)
            if choice == "first":
                return kept
    return kept


def random_crop_native(
    image: Image.Image,
    rng: np.random.Generator,
    *,
    image_size: int,
    scale: Sequence[float] = (0.4, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    choice: str = "first",
) -> Image.Image:
    """NARAIM's crop at native aspect ratio; the whole image when no crop keeps image_size**2 pixels.
    choice: which fitting draw is kept ('first' | 'last', see _sample_crop)."""
    w, h = image.size
    crop = _sample_crop(h, w, rng, scale, ratio, image_size * image_size, choice)
    if crop is None:
        return image
    y0, x0, ch, cw = crop
    return image.crop((x0, y0, x0 + cw, y0 + ch))


def random_resized_crop(
    image: Image.Image,
    rng: np.random.Generator,
    *,
    image_size: int,
    scale: Sequence[float] = (0.4, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    resample: str = "box_bilinear",
    choice: str = "first",
) -> Image.Image:
    """AIM training crop squashed to image_size x image_size (torchvision's RandomResizedCrop).
    choice: which fitting draw is kept ('first' | 'last', see _sample_crop)."""
    w, h = image.size
    crop = _sample_crop(h, w, rng, scale, ratio, 1, choice)
    if crop is None:  # central crop with the aspect ratio clamped into `ratio`
        r = min(max(w / h, ratio[0]), ratio[1])
        cw, ch = (w, w / r) if w / h < r else (h * r, h)
        cw, ch = min(cw, w), min(ch, h)
        y0, x0 = (h - ch) / 2, (w - cw) / 2
    else:
        y0, x0, ch, cw = crop
    return _resize_box(image, (image_size, image_size), (x0, y0, x0 + cw, y0 + ch), resample)


def resize_shorter_center_crop(
    image: Image.Image, rng: np.random.Generator, *, image_size: int, resample: str = "box_bilinear"
) -> Image.Image:
    """AIM evaluation: shorter side to round(256*S/224), then the central S x S."""
    del rng
    w, h = image.size
    f = round(256 * image_size / 224) / min(h, w)
    side = image_size / f  # the S x S output in source pixels
    y0, x0 = (h - side) / 2, (w - side) / 2
    return _resize_box(image, (image_size, image_size), (x0, y0, x0 + side, y0 + side), resample)


def horizontal_flip(image: Image.Image, rng: np.random.Generator, *, prob: float = 0.5) -> Image.Image:
    """Mirrors left-right with probability `prob`."""
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < prob else image


def make_transform(
    name: str,
    *,
    image_size: int,
    patch_size: int,
    max_tokens: int,
    crop_scale: Sequence[float] = (0.4, 1.0),
    crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
    crop_choice: str = "first",
    flip_prob: float = 0.5,
    resample: str = "box_bilinear",
    native_grid: str = "exact",
    native_crop: str = "center",
    jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
    jitter_prob: float = 0.8,
    rand_augment_args: dict | None = None,
    upscale: bool = True,
) -> Transform:
    """The transform called `name` with its geometry and parameters bound (a picklable partial)."""
    scale, ratio = tuple(crop_scale), tuple(crop_ratio)
    sizing = dict(resample=resample)
    bound = {
        "native_aspect_ratio_resize": functools.partial(
            native_aspect_ratio_resize,
            image_size=image_size,
            patch_size=patch_size,
            max_tokens=max_tokens,
            grid=native_grid,
            crop=native_crop,
            **sizing,
        ),
        "fit_to_token_budget": functools.partial(
            fit_to_token_budget, patch_size=patch_size, max_tokens=max_tokens, upscale=upscale, **sizing
        ),
        "random_crop_native": functools.partial(
            random_crop_native, image_size=image_size, scale=scale, ratio=ratio, choice=crop_choice
        ),
        "random_resized_crop": functools.partial(
            random_resized_crop, image_size=image_size, scale=scale, ratio=ratio, choice=crop_choice, **sizing
        ),
        "resize_shorter_center_crop": functools.partial(
            resize_shorter_center_crop, image_size=image_size, **sizing
        ),
        "horizontal_flip": functools.partial(horizontal_flip, prob=flip_prob),
        "color_jitter": functools.partial(color_jitter, strength=tuple(jitter), prob=jitter_prob),
        "rand_augment": functools.partial(rand_augment, **dict(rand_augment_args or {})),
    }
    if name not in bound:
        raise ValueError(f"unknown transform {name!r}; known: {', '.join(bound)}")
    return bound[name]


def transforms_from_config(
    data_cfg: Mapping[str, Any], names: Sequence[str], patch_size: int, max_tokens: int, upscale: bool = True
) -> tuple[Transform, ...]:
    """The transforms `names`, in order, with the parameters of the `data` config section bound
    (fit_to_token_budget enlarges small images only with `upscale`)."""
    return tuple(
        make_transform(
            t,
            image_size=int(data_cfg["image_size"]),
            patch_size=patch_size,
            max_tokens=max_tokens,
            crop_scale=data_cfg["crop_scale"],
            crop_ratio=data_cfg["crop_ratio"],
            crop_choice=data_cfg["crop_choice"],
            flip_prob=float(data_cfg["horizontal_flip_prob"]),
            resample=data_cfg["resample"],
            native_grid=data_cfg["native_grid"],
            native_crop=data_cfg["native_crop"],
            jitter=tuple(data_cfg["color_jitter"]),
            jitter_prob=float(data_cfg["color_jitter_prob"]),
            rand_augment_args=dict(data_cfg["rand_augment"]),
            upscale=upscale,
        )
        for t in names
    )


def draws_randomness(names: Sequence[str], flip_prob: float) -> bool:
    """Whether the transforms `names` change with the rng (a flip with probability 0 does not)."""
    random = set(names) & set(RANDOM_TRANSFORMS)
    if float(flip_prob) == 0:
        random.discard("horizontal_flip")
    return bool(random)


def apply_transforms(
    image: Image.Image, rng: np.random.Generator, transforms: Sequence[Transform]
) -> Image.Image:
    """Applies `transforms` in order, all drawing from the same rng."""
    for t in transforms:
        image = t(image, rng)
    return image


def min_source_pixels(
    names: Sequence[str], image_size: int, crop_scale: Sequence[float], budget_pixels: int = 0
) -> int:
    """Source pixels the transforms need at full quality (lets the decoder downscale larger JPEGs); 0 when
    that depends on the image (decode at full resolution). budget_pixels: the pixels of the largest grid
    fit_to_token_budget may make (its largest budget x P^2)."""
    area = image_size * image_size
    if "fit_to_token_budget" in names:
        area = max(area, budget_pixels)
    if "random_crop_native" in names or "random_resized_crop" in names:
        area = math.ceil(area / crop_scale[0])
    if "resize_shorter_center_crop" in names:
        return 0  # depends on the aspect ratio; decode at full resolution
    return area
