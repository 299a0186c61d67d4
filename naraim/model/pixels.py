"""uint8 pixels to the floats a model reads (and back): x/255, or standardised with a mean/std per channel."""

import jax
import jax.numpy as jnp

PIXEL_SCALES = ("imagenet", "unit", "inception")
# ImageNet mean / std of RGB in [0, 1] (pixel_scale 'imagenet': AIM's input and l3m's targets).
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)
# (mean, std) of each standardising scale; 'inception' (timm's name; SigLIP) maps [0, 1] to [-1, 1]
PIXEL_NORMS = {"imagenet": (PIXEL_MEAN, PIXEL_STD), "inception": ((0.5,) * 3, (0.5,) * 3)}


def scale_pixels(patches: jax.Array, pixel_scale: str) -> jax.Array:
    """uint8 [..., P*P*3] in (row, col, channel) order -> float32: x/255 ('unit', the NARAIM reference) or
    (x/255 - mean) / std per channel (PIXEL_NORMS: 'imagenet', AIM; 'inception', in [-1, 1])."""
    x = patches.astype(jnp.float32) / 255.0
    if pixel_scale == "unit":
        return x
    mean, std = PIXEL_NORMS[pixel_scale]
    x = x.reshape(*patches.shape[:-1], patches.shape[-1] // 3, 3)  # no -1: a batch may be empty
    return ((x - jnp.asarray(mean)) / jnp.asarray(std)).reshape(patches.shape)


def unscale_pixels(x: jax.Array, pixel_scale: str) -> jax.Array:
    """The inverse of scale_pixels, to pixels in [0, 1]: float [..., P*P*3] -> float32."""
    if pixel_scale == "unit":
        return x
    mean, std = PIXEL_NORMS[pixel_scale]
    y = x.reshape(*x.shape[:-1], x.shape[-1] // 3, 3) * jnp.asarray(std) + jnp.asarray(mean)
    return y.reshape(x.shape)
