"""Layer-wise learning-rate decay for fine-tuning (BEiT / MAE): deeper layers keep more of the learning rate.

Layer ids: embeddings (patch, position, SOS) 0, block i -> i + 1, final norm and classifier head depth + 1.
A parameter of layer l is updated with lr * decay ** (depth + 1 - l).
"""

import jax
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
