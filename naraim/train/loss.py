"""Next-patch regression loss: pixel targets computed on the device, error averaged over predicted real
patches."""

import jax.numpy as jnp


def patch_targets(patches, norm_pix: bool):
    """uint8 [B,N,K] patches -> float32 [B,N,K] regression targets.

    norm_pix: each patch standardised over its K = P*P*3 values in [0,1]: (x - mean) / sqrt(var + 1e-6).
    Otherwise pixels scaled to [-1, 1].
    """
    x = patches.astype(jnp.float32) / 255.0
    if norm_pix:
        mean = x.mean(axis=-1, keepdims=True)
        var = x.var(axis=-1, keepdims=True)
        return (x - mean) / jnp.sqrt(var + 1e-6)
    return x * 2.0 - 1.0


def unnormalize(pred, patches, norm_pix: bool):
    """The inverse of patch_targets: predictions [.., K] back to pixels in [0,1]; with norm_pix, using the
    target patch's own mean and std."""
    if not norm_pix:
        return (pred + 1.0) / 2.0
    x = patches.astype(jnp.float32) / 255.0
    return pred * jnp.sqrt(x.var(-1, keepdims=True) + 1e-6) + x.mean(-1, keepdims=True)


def loss_weights(length, first, num_tokens: int):
    """float32 [B,N]: 1 where target j is in the loss, i.e. first[b] <= j < length[b].

    length int32 [B] real patches; first int32 [B] (or scalar) first predicted target: the prefix length for
    prefix-causal attention, 1 for causal without an SOS token, 0 with one.
    """
    j = jnp.arange(num_tokens)[None, :]
    first = jnp.broadcast_to(jnp.asarray(first, jnp.int32), length.shape)
    return ((j < length[:, None]) & (j >= first[:, None])).astype(jnp.float32)


def per_patch_error(pred, patches, norm_pix: bool):
    """float32 [B,N]: mean over the K sub-pixels of the squared error between pred [B,N,K] and the target."""
    target = patch_targets(patches, norm_pix)
    return jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)


def next_patch_loss(pred, patches, weights, norm_pix: bool):
    """Scalar: sum of weighted per-patch errors / number of weighted patches (at least 1)."""
    err = per_patch_error(pred, patches, norm_pix)
    return jnp.sum(err * weights) / jnp.maximum(jnp.sum(weights), 1.0)
