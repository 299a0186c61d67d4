"""Pre-training heads: map the aligned backbone features [B,N,D] to per-patch pixel predictions [B,N,P*P*3].

A head receives `features` [B,N,D]: the final-LN backbone output at the position that predicts each
patch (features[:, j] predicts patch j; see naraim.model.model.Model). It returns float32 predictions.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from naraim.model.vit import MlpBlock


class LinearHead(nn.Module):
    """One Dense layer D -> out_dim."""

    out_dim: int
    dtype: str = "float32"

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        """features [B,N,D] -> float32 [B,N,out_dim]."""
        return nn.Dense(self.out_dim, dtype=self.dtype, name="out")(features).astype(jnp.float32)


class MLPHead(nn.Module):
    """AIM's head: `depth` residual blocks x + MLP(LN(x)) (hidden width `width`), LN, Dense(out_dim)."""

    out_dim: int
    depth: int
    width: int
    dtype: str = "float32"

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        """features [B,N,D] -> float32 [B,N,out_dim]."""
        x = features
        for i in range(self.depth):
            y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=f"norm_{i}")(x)
            x = x + MlpBlock(self.width, self.dtype, name=f"mlp_{i}")(y)
        x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(x)
        return nn.Dense(self.out_dim, dtype=self.dtype, name="out")(x).astype(jnp.float32)
