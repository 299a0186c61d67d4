"""Encoded image bytes -> RGB PIL image, or BadImageError for anything that is not a usable image.

RGB and grayscale JPEGs are decoded by libjpeg-turbo through simplejpeg (the same pixels as PIL's decoder,
at about 0.7x its CPU time: no intermediate image); every other format and colour space through PIL.

Handles grayscale, CMYK, palette and alpha images (composited over white), 16-bit images (scaled to 8 bits),
EXIF orientation, and images smaller than one patch (upscaled; an extremely elongated one is first cut to
the part of its long side the token budget can hold, so upscaling never blows up memory). Images with more
than `max_pixels` pixels (a decompression bomb) are refused from their header, before decoding. Large JPEGs
are decoded at a reduced DCT scale (PIL `draft`) when the transforms need fewer pixels than the file has.
"""

import io
import math
import warnings
from typing import BinaryIO

import numpy as np
import simplejpeg
from PIL import Image, ImageOps

# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose does)
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


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


DEFAULT_MAX_PIXELS = 100_000_000


def decode_image(
    data: bytes,
    *,
    patch_size: int = 1,
    min_area: int = 0,
    max_tokens: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decodes `data` to an RGB image (np.asarray: uint8 [H, W, 3]) with EXIF orientation applied.

    patch_size, max_tokens: images with a side below patch_size are upscaled (see upscale_to_patch).
    min_area: pixels the transforms need; a JPEG with more than twice as many is decoded at a reduced DCT
      scale (1/2, 1/4 or 1/8) that keeps at least `min_area` pixels (0: always full resolution).
    max_pixels: larger images are refused (BadImageError naming the size) before their pixels are decoded.
    """
    try:
        with warnings.catch_warnings():  # naraim's max_pixels replaces PIL's decompression-bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
        w, h = im.size
        if w < 1 or h < 1:
            raise BadImageError(f"empty image {w}x{h}")
        if w * h > max_pixels:
            raise BadImageError(
                f"{w}x{h} = {w * h:,} pixels exceeds data.max_pixels={max_pixels:,} (a decompression bomb?)"
            )
        if min_area and im.format == "JPEG" and w * h > 2 * min_area:
            f = math.sqrt(min_area / (w * h))
            im.draft("RGB", (math.ceil(w * f), math.ceil(h * f)))  # sets the DCT scale (and im.size) only
        if im.format == "JPEG" and im.mode in ("RGB", "L"):
            dw, dh = im.size  # after the draft: the DCT-scaled size PIL would decode
            pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=dw, min_height=dh)
            orientation = im.getexif().get(0x0112, 1)
            im = Image.fromarray(pixels)
            if orientation in _ORIENTATION:
                im = im.transpose(_ORIENTATION[orientation])
        else:
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
            im = _to_rgb(im)
    except BadImageError:
        raise
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...) for bad files
        raise BadImageError(f"{type(e).__name__}: {e}") from None
    return upscale_to_patch(im, patch_size, max_tokens)


def identify_image(f: BinaryIO) -> str:
    """'' if PIL recognises an image format in the header of the open file `f`, else the reason it does not.
    Reads the header only (PIL's 16-byte prefix and the format's header fields), never the pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.open(f)  # not closed: Image.close() would close `f` too
    except Exception as e:  # PIL raises UnidentifiedImageError, or a format's own error on a bad header
        return f"not an image: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return ""


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


def upscale_to_patch(image: Image.Image, patch_size: int, max_tokens: int = 0) -> Image.Image:
    """The image upscaled (aspect kept) so that both sides are >= patch_size; unchanged if they are.

    With max_tokens, the longer side is first cut centrally to what max_tokens patches of one patch across
    can show, so a 1 x 3,000,000 image is upscaled to 16 x 4,096 pixels (P 16, N 256), not 16 x 48,000,000.
    """
    w, h = image.size
    if min(h, w) >= patch_size:
        return image
    f = patch_size / min(h, w)
    if max_tokens:
        keep = math.ceil(max_tokens * patch_size / f)  # source pixels along the long side
        if w > h and w > keep:
            image = image.crop(((w - keep) // 2, 0, (w - keep) // 2 + keep, h))
        elif h > w and h > keep:
            image = image.crop((0, (h - keep) // 2, w, (h - keep) // 2 + keep))
        w, h = image.size
    return image.resize((max(patch_size, round(w * f)), max(patch_size, round(h * f))), Image.BICUBIC)
