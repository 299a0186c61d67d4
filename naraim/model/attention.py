"""Attention masks built on the device from lengths, and the multi-head self-attention layer.

Masks are boolean [B, 1, N, N] (True = the query may attend to the key), computed inside the jitted
function from `length` [B] and, for prefix-causal attention, `prefix_length` [B]: no N x N array ever
crosses from host to device. Padding keys (index >= length) are always masked. Every query also attends
to itself, so the rows of padding queries are never empty (no NaN); real queries never see padding.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from naraim.model import posemb

ATTENTION_MODES = ("causal", "prefix_causal", "bidirectional")


def attention_mask(
    length: jax.Array, num_tokens: int, mode: str, prefix_length: jax.Array | None = None
) -> jax.Array:
    """Returns the boolean mask [B, 1, N, N] of which key each query may attend to.

    length: int32 [B], real tokens per example (keys at index >= length are padding).
    mode: 'causal' (key <= query), 'prefix_causal' (key <= query, or both inside the first
      prefix_length tokens), 'bidirectional' (every real key).
    prefix_length: int32 [B] for 'prefix_causal'; None means an empty prefix (the mask is then causal).
    """
    q = jnp.arange(num_tokens)[:, None]
    k = jnp.arange(num_tokens)[None, :]
    if mode == "causal":
        visible = jnp.broadcast_to(k <= q, (1, num_tokens, num_tokens))
    elif mode == "prefix_causal":
        p = jnp.zeros_like(length) if prefix_length is None else prefix_length
        p = jnp.asarray(p)[:, None, None]
        visible = (k <= q)[None] | ((q[None] < p) & (k[None] < p))
    elif mode == "bidirectional":
        visible = jnp.ones((1, num_tokens, num_tokens), bool)
    else:
        raise ValueError(f"unknown attention mode {mode!r}; expected one of {ATTENTION_MODES}")
    real_key = k[None] < jnp.asarray(length)[:, None, None]
    mask = (visible & real_key) | (q == k)[None]
    return mask[:, None]


class SelfAttention(nn.Module):
    """Multi-head self-attention: fused qkv, optional rotary embedding, SDPA, output projection.

    Calls jax.nn.dot_product_attention (softmax in float32 whatever the compute dtype);
    implementation None lets JAX pick its backend ('xla' or 'cudnn' force one).
    """

    heads: int
    dtype: jnp.dtype = jnp.float32
    implementation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, rope_angles: jax.Array | None = None) -> jax.Array:
        """x [B,N,D], mask bool [B,1,N,N], rope_angles [B,N,Dh/2] radians or None -> [B,N,D]."""
        width = x.shape[-1]
        if width % self.heads:
            raise ValueError(f"width {width} is not divisible by heads {self.heads}")
        head_dim = width // self.heads
        qkv = nn.DenseGeneral((3, self.heads, head_dim), dtype=self.dtype, name="qkv")(x)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if rope_angles is not None:
            q = posemb.apply_rope(q, rope_angles)
            k = posemb.apply_rope(k, rope_angles)
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=self.implementation)
        return nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype, name="out")(out)
