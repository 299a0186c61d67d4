"""Kernel initialisers by name: flax's default LeCun normal, or the xavier uniform of MAE, AIM and DARL."""

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

INITS = ("lecun", "xavier")


def dense_kernel_init(name: str, fan_in_axes: int = 1):
    """init(rng, shape, dtype) for a kernel whose first `fan_in_axes` axes are inputs and the rest outputs.

    The initialiser sees the flattened [inputs, outputs] matrix, as a torch nn.Linear of the same size would
    (xavier's bound for a fused q/k/v kernel [D, 3, H, Dh] is sqrt(6 / (D + 3D))).
    """
    if name not in INITS:
        raise ValueError(f"unknown init {name!r}; expected one of {INITS}")
    base = nn.initializers.lecun_normal() if name == "lecun" else nn.initializers.xavier_uniform()

    def init(rng: jax.Array, shape: tuple, dtype=jnp.float32) -> jax.Array:
        matrix = (math.prod(shape[:fan_in_axes]), math.prod(shape[fan_in_axes:]))
        return base(rng, matrix, dtype).reshape(shape)

    return init
