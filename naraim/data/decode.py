"""Encoded image bytes -> RGB PIL image, or BadImageError for anything that is not a usable image.

Handles grayscale, CMYK, palette and alpha images (composited over white), 16-bit images (scaled to 8 bits),
EXIF orientation, and images smaller than one patch (upscaled). Large JPEGs are decoded at a reduced DCT
scale (PIL `draft`) when the transforms need fewer pixels than the file has.
"""

import io
import math

import numpy as np
from PIL import Image, ImageOps


class BadImageError(Exception):
    """The bytes are not a decodable image; the message says why."""


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.int64)
        scale = 257.0 if a.max(initial=0) > 255 or im.mode.startswith("I;16") else 1.0
        a = np.clip(a / scale, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float32)
        a = np.clip(a * (255.0 if a.max(initial=0) <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    if im.mode != "RGB":
        return im.convert("RGB")
    return im


def decode_image(data: bytes, *, patch_size: int = 1, min_area: int = 0) -> Image.Image:
    """Decodes `data` to an RGB image (np.asarray: uint8 [H, W, 3]) with EXIF orientation applied.

    patch_size: images with a side below it are upscaled (aspect kept) so both sides are >= patch_size.
    min_area: pixels the transforms need; a JPEG with more than twice as many is decoded at a reduced DCT
      scale (1/2, 1/4 or 1/8) that keeps at least `min_area` pixels (0: always full resolution).
    """
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        if w < 1 or h < 1:
            raise BadImageError(f"empty image {w}x{h}")
        if min_area and im.format == "JPEG" and w * h > 2 * min_area:
            f = math.sqrt(min_area / (w * h))
            im.draft("RGB", (math.ceil(w * f), math.ceil(h * f)))
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        im = _to_rgb(im)
    except BadImageError:
        raise
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...) for bad files
        raise BadImageError(f"{type(e).__name__}: {e}") from None
    return upscale_to_patch(im, patch_size)


def oriented_size(data: bytes) -> tuple[int, int]:
    """(width, height) of the encoded image as decode_image shows it (EXIF rotations applied), read from its
    header without decoding the pixels. BadImageError if the header is unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except Exception as e:
        raise BadImageError(f"{type(e).__name__}: {e}") from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def upscale_to_patch(image: Image.Image, patch_size: int) -> Image.Image:
    """The image upscaled (aspect kept) so that both sides are >= patch_size; unchanged if they are."""
    w, h = image.size
    if min(h, w) >= patch_size:
        return image
    f = patch_size / min(h, w)
    return image.resize((max(patch_size, round(w * f)), max(patch_size, round(h * f))), Image.BICUBIC)
