"""Regression targets of next-patch prediction, computed on the device from uint8 patches."""

import jax.numpy as jnp

RAW_SCALES = ("unit", "symmetric")


def patch_targets(patches, norm_pix: bool, raw_scale: str = "symmetric"):
    """uint8 [B,N,K] patches -> float32 [B,N,K] regression targets.

    norm_pix: each patch standardised over its K = P*P*3 values in [0,1]: (x - mean) / sqrt(var + 1e-6).
    Otherwise raw pixels: in [0, 1] (raw_scale 'unit', the NARAIM reference) or [-1, 1] ('symmetric').
    """
    x = patches.astype(jnp.float32) / 255.0
    if norm_pix:
        mean = x.mean(axis=-1, keepdims=True)
        var = x.var(axis=-1, keepdims=True)
        return (x - mean) / jnp.sqrt(var + 1e-6)
    return x if raw_scale == "unit" else x * 2.0 - 1.0


def unnormalize(pred, patches, norm_pix: bool, raw_scale: str = "symmetric"):
    """The inverse of patch_targets: predictions [.., K] back to pixels in [0,1]; with norm_pix, using the
    target patch's own mean and std."""
    if not norm_pix:
        return pred if raw_scale == "unit" else (pred + 1.0) / 2.0
    x = patches.astype(jnp.float32) / 255.0
    return pred * jnp.sqrt(x.var(-1, keepdims=True) + 1e-6) + x.mean(-1, keepdims=True)
