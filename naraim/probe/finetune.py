"""What fine-tuning adds to the probe step: layer-wise learning-rate decay and mixup / CutMix.

Layer-wise learning-rate decay for fine-tuning (BEiT / MAE): deeper layers keep more of the learning rate.

Layer ids: embeddings (patch, position, SOS) 0, block i -> i + 1, final norm and classifier head depth + 1.
A parameter of layer l is updated with lr * decay ** (depth + 1 - l).

Mixup and CutMix on patch sequences (fine-tuning), pure functions on device.

Each example i is mixed with its partner i-1 (the batch rolled by one). Images may have different grids
(native aspect ratio), so mixing happens by grid position: example i's patch at (row, col) is combined with
the partner's patch at the same (row, col) when the partner has one. For images with the same grid (e.g.
AIM's square inputs) this is exactly mixup / CutMix on pixels. The partner's share of the label is the
share of example i's pixels it contributed: (1 - lam) * covered / length for mixup, replaced / length for
CutMix. Pixels stay uint8 (mixed values are rounded).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _name(key) -> str:
    return str(getattr(key, "key", getattr(key, "name", key)))


def layer_scales(params: dict, depth: int, decay: float):
    """Pytree like `params` ({'backbone': ..., 'head': ...}) of lr multipliers; a scanned 'blocks' leaf
    (leading axis = depth) gets an array [depth, 1, ...] so each stacked block has its own multiplier."""

    def scale(path, leaf):
        names = [_name(k) for k in path]
        if names[0] != "backbone" or "encoder_norm" in names:
            return np.float32(1.0)
        if "blocks" in names:
            ids = np.arange(1, depth + 1, dtype=np.float32)
            return (decay ** (depth + 1 - ids)).reshape((depth,) + (1,) * (leaf.ndim - 1)).astype(np.float32)
        block = next((n for n in names if n.startswith("block_")), None)
        layer = int(block.removeprefix("block_")) + 1 if block else 0
        return np.float32(decay ** (depth + 1 - layer))

    return jax.tree_util.tree_map_with_path(scale, params)


def scale_by_layer(scales) -> optax.GradientTransformation:
    """Multiplies each update by its layer's multiplier (chain it after the optimizer, so lr and weight decay
    are both scaled)."""

    def scale(updates, params=None):
        return jax.tree_util.tree_map(lambda u, s: u * s, updates, scales)

    return optax.stateless(scale)


def partner_patches(patches: jax.Array, coords: jax.Array, grid: jax.Array, length: jax.Array):
    """The rolled-by-one partner's patch at each of example i's positions.

    patches uint8 [B,N,K], coords int32 [B,N,2], grid int32 [B,2], length int32 [B] ->
    (partner patches uint8 [B,N,K] (zeros where absent), present bool [B,N]: token i is real and the partner
    has a patch at its (row, col)).
    """
    p_patches, p_grid = jnp.roll(patches, 1, axis=0), jnp.roll(grid, 1, axis=0)
    rows, cols = coords[..., 0], coords[..., 1]
    real = jnp.arange(patches.shape[1])[None, :] < length[:, None]
    present = real & (rows < p_grid[:, :1]) & (cols < p_grid[:, 1:])
    index = jnp.clip(rows * p_grid[:, 1:] + cols, 0, patches.shape[1] - 1)
    gathered = jnp.take_along_axis(p_patches, index[..., None], axis=1)
    return jnp.where(present[..., None], gathered, 0).astype(patches.dtype), present


def mixup(batch: dict, lam: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Pixel mixup, weight `lam` (scalar) on example i -> (patches uint8 [B,N,K], partner share [B])."""
    other, present = partner_patches(batch["patches"], batch["coords"], batch["grid"], batch["length"])
    mixed = lam * batch["patches"].astype(jnp.float32) + (1 - lam) * other.astype(jnp.float32)
    patches = jnp.where(present[..., None], jnp.round(mixed), batch["patches"]).astype(jnp.uint8)
    share = (1 - lam) * present.sum(axis=1) / jnp.maximum(batch["length"], 1)
    return patches, share


def cutmix(batch: dict, lam: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Replaces a box of about (1 - lam) of example i's grid (random centre, clipped to the grid) by the
    partner's patches. Returns (patches uint8 [B,N,K], partner share [B] = replaced tokens / length)."""
    other, present = partner_patches(batch["patches"], batch["coords"], batch["grid"], batch["length"])
    grid = batch["grid"].astype(jnp.float32)
    cut = jnp.sqrt(1.0 - lam) * grid  # [B,2] box height, width in patches
    centre = jax.random.uniform(rng, grid.shape) * grid
    lo = jnp.clip(jnp.round(centre - cut / 2), 0, grid)
    hi = jnp.clip(jnp.round(centre + cut / 2), 0, grid)
    rc = batch["coords"]
    inside = jnp.all((rc >= lo[:, None, :]) & (rc < hi[:, None, :]), axis=-1)
    replace = inside & present
    patches = jnp.where(replace[..., None], other, batch["patches"])
    share = replace.sum(axis=1) / jnp.maximum(batch["length"], 1)
    return patches, share


def mix_batch(
    rng: jax.Array, batch: dict, targets: jax.Array, mixup_alpha: float, cutmix_alpha: float, prob: float
) -> tuple[dict, jax.Array]:
    """With probability `prob`, mixes the batch (mixup or CutMix, chosen 50/50 when both alphas are > 0) with
    lam ~ Beta(alpha, alpha) and mixes the soft targets [B,C] by each example's partner share."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return batch, targets
    k_apply, k_mode, k_lam, k_box = jax.random.split(rng, 4)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = jax.random.bernoulli(k_mode)
    else:
        use_cutmix = jnp.asarray(cutmix_alpha > 0)
    alpha = jnp.where(use_cutmix, max(cutmix_alpha, 1e-6), max(mixup_alpha, 1e-6))
    lam = jax.random.beta(k_lam, alpha, alpha)
    lam = jnp.where(jax.random.bernoulli(k_apply, prob), lam, 1.0)
    mixed_patches, mixed_share = mixup(batch, lam)
    cut_patches, cut_share = cutmix(batch, lam, k_box)
    patches = jnp.where(use_cutmix, cut_patches, mixed_patches)
    share = jnp.where(use_cutmix, cut_share, mixed_share)[:, None]
    targets = (1 - share) * targets + share * jnp.roll(targets, 1, axis=0)
    return {**batch, "patches": patches}, targets
