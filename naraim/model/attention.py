"""Attention masks built on the device from lengths, and the multi-head self-attention layer.

Masks are boolean [B, 1, N, N] (True = the query may attend to the key), computed inside the jitted
function from `length` [B] and, for prefix-causal attention, `prefix_length` [B]: no N x N array ever
crosses from host to device. Padding keys (index >= length) are always masked. Every query also attends
to itself, so the rows of padding queries are never empty (no NaN); real queries never see padding.
Packed rows (naraim.model.segments) use `packed_attention_mask`: the same modes within each image, and no
query ever sees a key of another image.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from naraim.model import posemb, segments
from naraim.model.init import dense_kernel_init

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


def packed_attention_mask(
    segment_ids: jax.Array, positions: jax.Array, mode: str, prefix_length: jax.Array | None = None
) -> jax.Array:
    """Returns the boolean mask [B, 1, N, N] of packed rows: a query sees keys of its own image only.

    segment_ids, positions: int32 [B,N] (naraim.model.segments). Within an image the modes of
    attention_mask apply to the tokens' positions in that image; prefix_length int32 [B,M] is per image slot
    (None: empty prefixes). Padding (segment 0) sees only itself.
    """
    q, k = positions[:, :, None], positions[:, None, :]
    if mode == "causal":
        visible = k <= q
    elif mode == "prefix_causal":
        p = (
            jnp.zeros_like(positions)
            if prefix_length is None
            else segments.per_token(prefix_length, segment_ids)
        )
        p = p[:, :, None]
        visible = (k <= q) | ((q < p) & (k < p))
    elif mode == "bidirectional":
        visible = jnp.ones_like(k <= q)
    else:
        raise ValueError(f"unknown attention mode {mode!r}; expected one of {ATTENTION_MODES}")
    same_image = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
    n = segment_ids.shape[1]
    mask = (visible & same_image) | jnp.eye(n, dtype=bool)[None]
    return mask[:, None]


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(Dh), masked) v, heads-major: q, k, v [B,H,N,Dh], mask [B,1,N,N] -> [B,H,N,Dh].

    Logits and softmax in float32 whatever the compute dtype. 1/sqrt(Dh) scales q [B,H,N,Dh] rather than
    the logits [B,H,N,N]: on the CPU a scale on the logits became a materialised [B,H,N,N] operand read by
    every layer forward and backward. The softmax is normalised after the value product
    (exp(l - max) v / sum(exp(l - max))), the same function as normalising the probabilities but one
    [B,H,N,N] pass cheaper forward and backward; the mask is an additive -1e30 so its gradient is free.
    Every row must see at least one key (attention_mask guarantees the diagonal).
    """
    bias = jnp.where(mask, 0.0, -1e30).astype(jnp.float32)
    q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) + bias
    weights = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
    out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return (out / jnp.sum(weights, axis=-1, keepdims=True)).astype(v.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention: q/k/v projections, optional rotary embedding, attention, output projection.

    Parameters 'qkv' {kernel [D,3,H,Dh], bias [3,H,Dh]} and 'out' {kernel [H,Dh,D], bias [D]} (the layout of
    nn.DenseGeneral; no biases when use_bias is False; kernels by `weight_init`, see naraim.model.init).
    q, k and v each come from their own matmul (a slice of the qkv kernel), in the layout the attention core
    takes: implementation None or 'xla': dot_product_attention above on [B,H,N,Dh]; 'cudnn':
    jax.nn.dot_product_attention's cuDNN kernel (GPU, bf16) on [B,N,H,Dh].
    """

    heads: int
    dtype: jnp.dtype = jnp.float32
    implementation: str | None = None
    use_bias: bool = True
    weight_init: str = "lecun"

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, rope_angles: jax.Array | None = None) -> jax.Array:
        """x [B,N,D], mask bool [B,1,N,N], rope_angles [B,N,Dh/2] radians or None -> [B,N,D]."""
        width = x.shape[-1]
        if width % self.heads:
            raise ValueError(f"width {width} is not divisible by heads {self.heads}")
        head_dim = width // self.heads
        projection = dict(use_bias=self.use_bias, weight_init=self.weight_init)
        qkv_kernel, qkv_bias = _ProjectionParams(
            (width, 3, self.heads, head_dim), 1, **projection, separate_axis=1, name="qkv"
        )()
        out_kernel, out_bias = _ProjectionParams((self.heads, head_dim, width), 2, **projection, name="out")()
        x, qkv_kernel, out_kernel = nn.dtypes.promote_dtype(x, qkv_kernel, out_kernel, dtype=self.dtype)
        heads_major = self.implementation != "cudnn"  # the einsum core takes [B,H,N,Dh], cuDNN [B,N,H,Dh]

        def add_bias(y: jax.Array, bias: jax.Array | None) -> jax.Array:
            return y if bias is None else y + bias.astype(y.dtype)

        def project(i: int) -> jax.Array:  # q, k or v from its own matmul: no slice of a stacked qkv
            y = jnp.einsum("bnd,dhk->bnhk", x, qkv_kernel[:, i])
            y = add_bias(y, None if qkv_bias is None else qkv_bias[i])
            if rope_angles is not None and i < 2:
                y = posemb.apply_rope(y, rope_angles)
            return y.swapaxes(1, 2) if heads_major else y

        q, k, v = project(0), project(1), project(2)
        if heads_major:
            out = jnp.einsum("bhnk,hkd->bnd", dot_product_attention(q, k, v, mask), out_kernel)
        else:
            out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
            out = jnp.einsum("bnhk,hkd->bnd", out, out_kernel)
        return add_bias(out, out_bias)


class _ProjectionParams(nn.Module):
    """Declares 'kernel' (float32 `kernel_shape`, initialised as the [inputs, outputs] matrix with the first
    `fan_in_axes` axes as inputs) and, with use_bias, a zero 'bias' over the remaining axes; returns
    (kernel, bias), the bias None without use_bias."""

    kernel_shape: tuple[int, ...]
    fan_in_axes: int
    use_bias: bool = True
    weight_init: str = "lecun"
    separate_axis: int | None = None  # the q/k/v axis of a fused kernel (weight_init 'xavier_separate_qkv')

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array | None]:
        init = dense_kernel_init(self.weight_init, self.fan_in_axes, self.separate_axis)
        kernel = self.param("kernel", init, self.kernel_shape, jnp.float32)
        if not self.use_bias:
            return kernel, None
        bias = self.param("bias", nn.initializers.zeros, self.kernel_shape[self.fan_in_axes :], jnp.float32)
        return kernel, bias
