"""Synthetic labelled images at native aspect ratios, generated from (seed, split, index); no files.

Each image is one object of its class drawn at a random position, scale, colour and rotation over a random
low-contrast background (gradient, blocky noise, stripes, or clutter of thin lines) in a colour that stands
out from it, so the class stays recognisable at the demo's 64x64-pixel area. Shapes are drawn in pixel
space, so the proportion pairs (circle/ellipse, square/rectangle) are only separable at the native aspect
ratio: squashing a wide image into a square turns a circle into an ellipse.
"""

import math

import numpy as np

CLASS_NAMES = (
    "circle",
    "ellipse",
    "square",
    "rectangle",
    "triangle",
    "cross",
    "ring",
    "star",
    "crescent",
    "hexagon",
)
SPLIT_IDS = {"train": 0, "validation": 1, "val": 1, "test": 2}
# Width/height of photo-like collections; the remaining mass is a log-uniform tail over [1/3, 3].
_ASPECTS = (4 / 3, 3 / 4, 1.0, 16 / 9, 9 / 16)
_ASPECT_PROBS = (0.3, 0.2, 0.15, 0.15, 0.05)


def _regular_polygon(u: np.ndarray, v: np.ndarray, sides: int, apothem: float) -> np.ndarray:
    inside = np.ones(u.shape, bool)
    for k in range(sides):
        a = math.pi / 2 + 2 * math.pi * k / sides
        inside &= u * math.cos(a) + v * math.sin(a) <= apothem
    return inside


def shape_mask(label: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of class `label` in object coordinates (u, v), radius 1 = the object's size."""
    r2 = u * u + v * v
    if label == 0:
        return r2 <= 1.0
    if label == 1:
        return u * u + (v / 0.5) ** 2 <= 1.0
    if label == 2:
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if label == 3:
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.5)
    if label == 4:
        return _regular_polygon(u, v, 3, 0.5)
    if label == 5:
        au, av = np.abs(u), np.abs(v)
        return ((au <= 1.0) & (av <= 0.3)) | ((au <= 0.3) & (av <= 1.0))
    if label == 6:
        return (r2 <= 1.0) & (r2 >= 0.36)
    if label == 7:
        return np.sqrt(r2) <= 0.6 + 0.4 * np.cos(5 * np.arctan2(v, u))
    if label == 8:
        return (r2 <= 1.0) & ((u - 0.45) ** 2 + v * v > 0.64)
    if label == 9:
        return _regular_polygon(u, v, 6, 0.87)
    raise ValueError(f"synthetic class {label} does not exist (0..{len(CLASS_NAMES) - 1})")


def _size(rng: np.random.Generator, min_side: int, max_side: int) -> tuple[int, int]:
    k = rng.choice(len(_ASPECTS) + 1, p=(*_ASPECT_PROBS, 1 - sum(_ASPECT_PROBS)))
    aspect = _ASPECTS[k] if k < len(_ASPECTS) else math.exp(rng.uniform(math.log(1 / 3), math.log(3)))
    q = max(aspect, 1 / aspect)
    long = rng.uniform(min(max_side, min_side * q), max_side)
    short = max(8, round(long / q))
    long = round(long)
    return (short, long) if aspect >= 1 else (long, short)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.uint8)


def _background(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [h, w, 3] background and its approximate mean colour float [3]."""
    kind = rng.integers(4)
    a = rng.uniform(0, 2 * math.pi)
    cos, sin = math.cos(a), math.sin(a)
    c0 = _colour(rng)
    c1 = np.clip(c0.astype(np.int64) + rng.integers(-48, 49, 3), 0, 255).astype(np.uint8)  # low contrast
    mean = (c0.astype(np.float32) + c1) / 2
    if kind == 1:  # blocky noise around a base colour
        block = int(rng.integers(4, 16))
        noise = rng.integers(-24, 25, (h // block + 1, w // block + 1, 3)) + c0.astype(np.int64)
        noise = np.clip(noise, 0, 255).astype(np.uint8)
        return noise.repeat(block, 0).repeat(block, 1)[:h, :w], c0.astype(np.float32)
    xs = np.arange(w, dtype=np.float32)[None, :]
    ys = np.arange(h, dtype=np.float32)[:, None]
    if kind == 2:  # stripes of two colours
        period = rng.uniform(6, 40)
        stripe = ((xs * (cos / period) + ys * (sin / period)) % 1.0 < 0.5).view(np.uint8)
        return np.stack([c0, c1])[stripe], mean
    # gradient from c0 to c1 along direction a (kind 0), with clutter on top (kind 3): a 256-colour lookup
    corners = [x * cos + y * sin for x in (0, w) for y in (0, h)]
    lo, span = min(corners), max(max(corners) - min(corners), 1.0)
    t = (xs * (cos * 255 / span) + (ys * (sin * 255 / span) - lo * 255 / span)).astype(np.uint8)
    ramp = np.linspace(0.0, 1.0, 256, dtype=np.float32)[:, None]
    lut = (c0 + ramp * (c1.astype(np.float32) - c0)).astype(np.uint8)
    img = lut[t]
    if kind == 3:  # clutter: thin line segments (length/width >= 8, unlike any object class)
        for _ in range(int(rng.integers(2, 7))):
            length = rng.uniform(0.1, 0.4) * max(h, w)
            line = lambda u, v: (np.abs(u) <= 1.0) & (np.abs(v) <= 0.06)  # noqa: E731
            faint = _colour(rng) // 4 + (3 * mean / 4).astype(np.uint8)
            _draw(img, rng, line, length / 2, faint, extent=(1.0, 0.06))
    return img, mean


def _draw(
    img: np.ndarray,
    rng: np.random.Generator,
    mask_fn,
    radius: float,
    colour: np.ndarray,
    extent: tuple[float, float] = (1.15, 1.15),
) -> None:
    """Draws mask_fn (object coordinates in units of radius, inside |u| <= extent[0], |v| <= extent[1]) in
    place at a random rotation and a random centre that keeps the whole object inside when it fits."""
    h, w = img.shape[:2]
    theta = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(theta), math.sin(theta)
    ex = radius * (extent[0] * abs(c) + extent[1] * abs(s))  # half-extents of the rotated box, pixels
    ey = radius * (extent[0] * abs(s) + extent[1] * abs(c))
    cy = rng.uniform(min(ey, h / 2), max(h - ey, h / 2))
    cx = rng.uniform(min(ex, w / 2), max(w - ex, w / 2))
    y0, y1 = max(0, int(cy - ey) - 1), min(h, int(cy + ey) + 2)
    x0, x1 = max(0, int(cx - ex) - 1), min(w, int(cx + ex) + 2)
    if y0 >= y1 or x0 >= x1:
        return
    dy = (np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy) / radius
    dx = (np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx) / radius
    u, v = dx * c + dy * s, dy * c - dx * s
    img[y0:y1, x0:x1][mask_fn(u, v)] = colour


def generate(
    seed: int, split: str, index: int, *, num_classes: int = 10, min_side: int = 64, max_side: int = 320
) -> tuple[np.ndarray, int]:
    """The image uint8 [H, W, 3] and label of example `index` of `split`; same arguments, same image."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    label = int(rng.integers(num_classes))
    h, w = _size(rng, min_side, max_side)
    img, mean = _background(rng, h, w)
    colour = _colour(rng)
    if np.abs(colour - mean).max() < 128:  # keep the object clearly visible
        colour = np.where(mean < 128, 255 - colour // 4, colour // 4).astype(np.uint8)
    radius = rng.uniform(0.3, 0.45) * min(h, w)
    _draw(img, rng, lambda u, v: shape_mask(label, u, v), radius, colour)
    return img, label
