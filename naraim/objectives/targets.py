"""Regression targets of next-patch prediction, computed on the device from uint8 patches."""

import jax.numpy as jnp

from naraim.model.pixels import scale_pixels, unscale_pixels

RAW_SCALES = ("unit", "symmetric")


def patch_targets(patches, norm_pix: bool, raw_scale: str = "symmetric", pixel_scale: str = "unit"):
    """uint8 [B,N,K] patches -> float32 [B,N,K] regression targets.

    norm_pix: each patch standardised over its K = P*P*3 values, (x - mean) / sqrt(var + 1e-6), x the pixels
    scaled by `pixel_scale` ('unit': x/255, the NARAIM reference; 'imagenet': the mean/std-standardised image,
    as l3m's AIMv1 normalises the patches of its model input). Otherwise raw pixels: in [0, 1] (raw_scale
    'unit', the NARAIM reference) or [-1, 1] ('symmetric').
    """
    if norm_pix:
        x = scale_pixels(patches, pixel_scale)
        mean = x.mean(axis=-1, keepdims=True)
        var = x.var(axis=-1, keepdims=True)
        return (x - mean) / jnp.sqrt(var + 1e-6)
    x = patches.astype(jnp.float32) / 255.0
    return x if raw_scale == "unit" else x * 2.0 - 1.0


def unnormalize(pred, patches, norm_pix: bool, raw_scale: str = "symmetric", pixel_scale: str = "unit"):
    """The inverse of patch_targets: predictions [.., K] back to pixels in [0,1]; with norm_pix, using the
    target patch's own mean and std (and undoing `pixel_scale`)."""
    if not norm_pix:
        return pred if raw_scale == "unit" else (pred + 1.0) / 2.0
    x = scale_pixels(patches, pixel_scale)
    return unscale_pixels(
        pred * jnp.sqrt(x.var(-1, keepdims=True) + 1e-6) + x.mean(-1, keepdims=True), pixel_scale
    )
