"""DARL's denoising patch decoder: a small transformer over two tokens per sequence position.

For every position i the decoder sees the pair [backbone output aligned to target i, embedding of
the noisy target patch x_t,i] (the signal level g_i optionally appended to x_t,i as one more
channel before the embedding), runs `depth` pre-LayerNorm transformer blocks over that length-2
sequence without a causal mask, and reads the patch prediction (x_0 or eps) off the noisy token.
The positions are independent: they are folded into the batch, so the decoder costs
O(B * N) short sequences whatever the backbone's sequence length.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from naraim.model.attention import SelfAttention
from naraim.model.init import dense_kernel_init


class DenoiserBlock(nn.Module):
    """Pre-LayerNorm transformer block on [M, 2, W] token pairs (full attention within each pair)."""

    heads: int
    mlp_dim: int
    dtype: Any = jnp.float32
    weight_init: str = "lecun"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [M, 2, W] -> [M, 2, W]."""
        mask = jnp.ones((1, 1, 2, 2), bool)
        dense = dict(dtype=self.dtype, kernel_init=dense_kernel_init(self.weight_init))
        attention = SelfAttention(
            self.heads, dtype=self.dtype, weight_init=self.weight_init, name="attention"
        )
        x = x + attention(nn.LayerNorm(name="ln1")(x), mask)
        y = nn.Dense(self.mlp_dim, **dense, name="mlp_in")(nn.LayerNorm(name="ln2")(x))
        return x + nn.Dense(x.shape[-1], **dense, name="mlp_out")(nn.gelu(y))


class Denoiser(nn.Module):
    """Denoising patch decoder: (features [B,N,D], noisy [B,N,K], gamma [B,N] | None) -> [B,N,K] float32.

    patch_dim: K = P*P*3. width/heads/mlp_dim/depth: the decoder's own transformer (DARL: one block).
    gamma None: the decoder is not told the signal level; otherwise g is appended to every noisy
    patch as channel K+1 (DARL's "conditioning on gamma").
    """

    patch_dim: int
    width: int
    heads: int
    mlp_dim: int
    depth: int = 1
    dtype: Any = jnp.float32
    weight_init: str = "lecun"

    @nn.compact
    def __call__(self, features: jax.Array, noisy: jax.Array, gamma: jax.Array | None = None) -> jax.Array:
        batch, num_tokens = noisy.shape[:2]
        if gamma is not None:
            noisy = jnp.concatenate([noisy, gamma[..., None].astype(noisy.dtype)], axis=-1)
        dense = dict(dtype=self.dtype, kernel_init=dense_kernel_init(self.weight_init))
        cond = nn.Dense(self.width, **dense, name="embed_features")(features)
        patch = nn.Dense(self.width, **dense, name="embed_noisy")(noisy)
        token_type = self.param("token_type", nn.initializers.normal(0.02), (2, self.width), jnp.float32)
        x = jnp.stack([cond, patch], axis=2) + token_type.astype(cond.dtype)  # [B, N, 2, W]
        x = x.reshape(batch * num_tokens, 2, self.width)
        for i in range(self.depth):
            x = DenoiserBlock(self.heads, self.mlp_dim, self.dtype, self.weight_init, name=f"block_{i}")(x)
        x = nn.LayerNorm(name="ln_final")(x[:, 1])
        out = nn.Dense(self.patch_dim, **dense, name="out")(x)
        return out.reshape(batch, num_tokens, self.patch_dim).astype(jnp.float32)


def make_denoiser(model_cfg: Any, patch_dim: int, backbone_width: int, backbone_heads: int) -> Denoiser:
    """Decoder from `model.denoiser.{depth, width, heads, mlp_ratio}` (0: the backbone's width/heads)."""
    cfg = model_cfg.get("denoiser", None) or {}
    width = int(cfg.get("width", 0)) or backbone_width
    heads = int(cfg.get("heads", 0)) or backbone_heads
    dtype = jnp.bfloat16 if model_cfg.get("dtype", "float32") == "bfloat16" else jnp.float32
    return Denoiser(
        patch_dim=patch_dim,
        width=width,
        heads=heads,
        mlp_dim=int(float(cfg.get("mlp_ratio", 4)) * width),
        depth=int(cfg.get("depth", 1)),
        dtype=dtype,
        weight_init=model_cfg.get("weight_init", "lecun"),
    )
