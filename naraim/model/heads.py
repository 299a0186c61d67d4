"""Pre-training heads: map the aligned backbone features [B,N,D] to per-patch pixel predictions [B,N,P*P*3].

A head receives `features` [B,N,D]: the final-LN backbone output at the position that predicts each
patch (features[:, j] predicts patch j; see naraim.model.model.Model). It returns float32 predictions.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from naraim.model.init import dense_kernel_init
from naraim.model.layernorm import LayerNorm
from naraim.model.mlp import MlpBlock


class LinearHead(nn.Module):
    """One Dense layer D -> out_dim."""

    out_dim: int
    dtype: str = "float32"
    weight_init: str = "lecun"

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        """features [B,N,D] -> float32 [B,N,out_dim]."""
        out = nn.Dense(
            self.out_dim, dtype=self.dtype, kernel_init=dense_kernel_init(self.weight_init), name="out"
        )
        return out(features).astype(jnp.float32)


class MLPHead(nn.Module):
    """AIM's head: [Dense(width) input projection], `depth` residual blocks x + MLP(LN(x)) with hidden width
    mlp_dim, LN, Dense(out_dim).

    width 0: the blocks run at the features' width D without a projection; otherwise at `width` behind a
    Dense D -> width with bias (AIMv1: 1536 -> 2048). use_bias, gelu, norm_eps and weight_init as the
    backbone's (naraim.model.config); the projection and the output layer always have biases.
    """

    out_dim: int
    depth: int
    mlp_dim: int
    width: int
    dtype: str
    use_bias: bool
    gelu: str
    norm_eps: float
    weight_init: str

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        """features [B,N,D] -> float32 [B,N,out_dim]."""
        kernel_init = dense_kernel_init(self.weight_init)
        x = features
        if self.width:
            x = nn.Dense(self.width, dtype=self.dtype, kernel_init=kernel_init, name="proj")(x)
        block = dict(use_bias=self.use_bias, gelu=self.gelu, weight_init=self.weight_init)
        for i in range(self.depth):
            y = LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name=f"norm_{i}")(x)
            x = x + MlpBlock(self.mlp_dim, self.dtype, **block, name=f"mlp_{i}")(y)
        x = LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, name="norm")(x)
        out = nn.Dense(self.out_dim, dtype=self.dtype, kernel_init=kernel_init, name="out")
        return out(x).astype(jnp.float32)
