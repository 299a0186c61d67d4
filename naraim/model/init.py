"""Kernel initialisers by name: flax's default LeCun normal, or the xavier uniform of MAE, AIM and DARL."""

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

# 'xavier_separate_qkv': xavier, with the fused q/k/v kernel initialised as three D x D matrices (l3m's
# AIMv1 has three Linear(D, D)) instead of one D x 3D matrix (MAE's and DARL's Linear(D, 3D)).
INITS = ("lecun", "xavier", "xavier_separate_qkv")


def dense_kernel_init(name: str, fan_in_axes: int = 1, separate_axis: int | None = None):
    """init(rng, shape, dtype) for a kernel whose first `fan_in_axes` axes are inputs and the rest outputs.

    The initialiser sees the flattened [inputs, outputs] matrix, as a torch nn.Linear of the same size would
    (xavier's bound for a fused q/k/v kernel [D, 3, H, Dh] is sqrt(6 / (D + 3D))). With
    name='xavier_separate_qkv' and `separate_axis` (the fused kernel's q/k/v axis), each slice along that
    axis is initialised as a matrix of its own (bound sqrt(6 / (D + D))).
    """
    if name not in INITS:
        raise ValueError(f"unknown init {name!r}; expected one of {INITS}")
    base = nn.initializers.lecun_normal() if name == "lecun" else nn.initializers.xavier_uniform()

    def init(rng: jax.Array, shape: tuple, dtype=jnp.float32) -> jax.Array:
        matrix = (math.prod(shape[:fan_in_axes]), math.prod(shape[fan_in_axes:]))
        return base(rng, matrix, dtype).reshape(shape)

    if name != "xavier_separate_qkv" or separate_axis is None:
        return init

    def separate(rng: jax.Array, shape: tuple, dtype=jnp.float32) -> jax.Array:
        one = shape[:separate_axis] + shape[separate_axis + 1 :]
        parts = [init(k, one, dtype) for k in jax.random.split(rng, shape[separate_axis])]
        return jnp.stack(parts, axis=separate_axis)

    return separate
