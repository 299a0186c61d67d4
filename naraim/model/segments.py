"""Packed rows: several images in one token row, told apart on the device by `segment_ids` and `positions`.

A packed batch carries, besides the per-token arrays of the batch contract,
  segment_ids  int32 [B,N]  the image slot 1..M of each token, 0 for padding
  positions    int32 [B,N]  the token's index within its own image
and per-image arrays with one entry per slot: grid [B,M,2], length [B,M] (0 for an empty slot), label,
aspect_ratio. An unpacked batch (grid [B,2], length [B]) is the case of one image per row; `as_packed` writes
it in the packed form (numpy, host side), which the model computes to the same bits.
"""

import jax
import jax.numpy as jnp
import numpy as np

PACKED_INPUTS = ("segment_ids", "positions")  # present in a batch only when it is packed


def is_packed(batch: dict) -> bool:
    """Whether `batch` holds packed rows (has segment_ids)."""
    return "segment_ids" in batch


def per_token(values: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """values [B,M,...] per image slot -> [B,N,...]: each token's own image's value (slot 1's for padding)."""
    index = jnp.maximum(segment_ids - 1, 0).reshape(segment_ids.shape + (1,) * (values.ndim - 2))
    return jnp.take_along_axis(values, index, axis=1)


def per_image_sum(x: jax.Array, segment_ids: jax.Array, num_images: int) -> jax.Array:
    """x [B,N] -> [B,M]: the sum of x over the tokens of each image slot (padding left out)."""
    onehot = segment_ids[..., None] == jnp.arange(1, num_images + 1)
    return jnp.sum(jnp.where(onehot, x[..., None], 0), axis=1)


def starts(positions: jax.Array) -> jax.Array:
    """bool [B,N]: the tokens that begin an image (position 0; padding too, which nothing reads)."""
    return positions == 0


def shift_within_images(x: jax.Array, positions: jax.Array, first: jax.Array) -> jax.Array:
    """x [B,N,...] -> [B,N,...]: token j gets x[j-1] of the same image; tokens that begin an image get `first`
    (broadcast to x[:, :1]'s shape)."""
    shifted = jnp.concatenate([jnp.zeros_like(x[:, :1]), x[:, :-1]], axis=1)
    start = starts(positions).reshape(positions.shape + (1,) * (x.ndim - 2))
    return jnp.where(start, jnp.broadcast_to(first, x[:, :1].shape).astype(x.dtype), shifted)


def as_packed(batch: dict) -> dict:
    """An unpacked batch (numpy, grid [B,2], length [B], ...) as packed rows of one image each (M = 1)."""
    out = dict(batch)
    length = np.asarray(batch["length"])
    n = np.asarray(batch["patches"]).shape[1]
    j = np.arange(n, dtype=np.int32)[None, :]
    out["segment_ids"] = (j < length[:, None]).astype(np.int32)
    out["positions"] = np.where(j < length[:, None], j, 0).astype(np.int32)
    for key in ("grid", "length", "label", "aspect_ratio", "valid"):
        if key in batch:
            out[key] = np.asarray(batch[key])[:, None]
    return out
