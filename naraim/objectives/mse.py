"""The next-patch MSE: which targets are in the loss, how they are averaged, the per-patch squared error."""

import jax.numpy as jnp

from naraim.model import segments
from naraim.objectives.targets import patch_targets

AVERAGES = ("per_image", "per_patch", "fixed_count")


def loss_weights(length, first, num_tokens: int):
    """float32 [B,N]: 1 where target j is in the loss, i.e. first[b] <= j < length[b].

    length int32 [B] real patches; first int32 [B] (or scalar) first predicted target: the prefix length for
    prefix-causal attention, 1 for causal without an SOS token, 0 with one.
    """
    j = jnp.arange(num_tokens)[None, :]
    first = jnp.broadcast_to(jnp.asarray(first, jnp.int32), length.shape)
    return ((j < length[:, None]) & (j >= first[:, None])).astype(jnp.float32)


def packed_loss_weights(segment_ids, positions, first):
    """float32 [B,N] of packed rows (naraim.model.segments): 1 where the token is a target of its image,
    i.e. it is not padding and its position is at least first[b, m], m its image slot (first int32 [B,M])."""
    first = segments.per_token(jnp.asarray(first, jnp.int32), segment_ids)
    return ((segment_ids > 0) & (positions >= first)).astype(jnp.float32)


def target_shares(weights, average: str, slots: int | None = None, segment_ids=None, num_images: int = 1):
    """float32 [B,N]: each target's share of the batch loss (0 for targets not weighted).

    weights [B,N] from loss_weights.
    'per_patch': one mean over every weighted target of the batch (long images weigh more; AIM).
    'per_image': the mean over each image's targets, then the mean over the images that have targets; an
      image without targets (one patch, or an empty slot) is left out.
    'fixed_count': every target weighs 1 / (B x slots), `slots` the prediction positions per example (N - 1,
      N with an SOS token): the batch's summed errors over a count fixed by the batch's shape, prefix and
      padding positions counting as zeros. The NARAIM reference's jnp.mean over the masked [B, N-1, K]
      errors until its commit f8d1e65, which trained its Table 1 models.
    The shares sum to 1 for 'per_patch' and 'per_image' (0 without any target), to the weighted fraction of
    the slots for 'fixed_count'. segment_ids int32 [B,N] of packed rows with num_images slots a row:
    'per_image' averages over each image of a row, not over the row; the others count targets and rows as
    they are.
    """
    if average == "per_patch":
        return weights / jnp.maximum(jnp.sum(weights), 1.0)
    if average == "fixed_count":
        if slots is None or slots < 1:
            raise ValueError(
                f"loss average 'fixed_count' needs the prediction slots per example, got {slots}"
            )
        return weights / (weights.shape[0] * slots)
    if average != "per_image":
        raise ValueError(f"unknown loss average {average!r}; expected one of {AVERAGES}")
    if segment_ids is None:
        per_image = jnp.sum(weights, axis=1, keepdims=True)
        images = jnp.maximum(jnp.sum(per_image > 0), 1)
        return weights / (jnp.maximum(per_image, 1.0) * images)
    per_image = segments.per_image_sum(weights, segment_ids, num_images)  # [B,M]
    images = jnp.maximum(jnp.sum(per_image > 0), 1)
    return weights / (jnp.maximum(segments.per_token(per_image, segment_ids), 1.0) * images)


def per_patch_error(pred, patches, norm_pix: bool, raw_scale: str = "symmetric", pixel_scale: str = "unit"):
    """float32 [B,N]: mean over the K sub-pixels of the squared error between pred [B,N,K] and the target
    (naraim.objectives.targets.patch_targets)."""
    target = patch_targets(patches, norm_pix, raw_scale, pixel_scale)
    return jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)


def next_patch_loss(
    pred,
    patches,
    weights,
    norm_pix: bool,
    raw_scale: str = "symmetric",
    average: str = "per_patch",
    slots: int | None = None,
    pixel_scale: str = "unit",
):
    """Scalar: the per-patch errors averaged by target_shares(weights, average, slots)."""
    err = per_patch_error(pred, patches, norm_pix, raw_scale, pixel_scale)
    return jnp.sum(err * target_shares(weights, average, slots))
