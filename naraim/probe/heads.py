"""Every classification head of the probes and fine-tuning, over backbone features [B,N,D] with `length`
[B] real tokens per example (padding tokens excluded everywhere), and make_head, which picks one.

- attentive probe: ProbeHead (AIM's, ml-aim): BatchNorm (no scale, no bias; statistics over real tokens
  only) -> one learned query attending to the tokens (multi-head, the query used directly, keys/values
  without bias, padding keys masked) -> [optional MAP: x + MLP(LN(x))] -> linear classifier without bias.
  With one query, the BatchNorm and the key and value projections are applied to [heads, D] vectors instead
  of every token (the same function). ReferenceProbeHead (the NARAIM reference code's): no BatchNorm; one
  learned query through flax's MultiHeadDotProductAttention (q/k/v/out projections with biases; padding
  keys masked) -> linear classifier.
- linear probe: BatchNorm (no scale or bias) on the mean of the real tokens (pooled before the head, so the
  feature cache holds [D] per block and example, not [N, D]), then a linear layer;
- fine-tuning descriptors: the last real token's output, the mean of the real tokens, or the ProbeHead.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from naraim.model.mlp import MlpBlock
from naraim.probe.features import mean_pool, real_token_mask

POOLS = ("mean", "last")
DESCRIPTORS = ("last", "mean", "probe")
PROBE_HEADS = ("aim", "naraim_ref")


class MaskedBatchNorm(nn.Module):
    """BatchNorm over the real tokens of the batch (per channel), without scale or bias: BN(x) = (x - mean) *
    inv_std. Returns (mean, inv_std) rather than BN(x), for the attention to fold them in.

    train: the batch statistics of real tokens, and the running averages in the 'batch_stats' collection
    are updated (pass mutable=['batch_stats']); eval: the running averages.
    """

    momentum: float = 0.9
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        """x [B,N,D], mask bool [B,N] -> (mean, inv_std) float32 [D]."""
        x = x.astype(jnp.float32)
        dim = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (dim,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (dim,), jnp.float32)
        if train:
            w = mask.astype(jnp.float32)[..., None]
            count = jnp.maximum(w.sum(), 1.0)
            mean = (x * w).sum(axis=(0, 1)) / count
            var = (jnp.square(x - mean) * w).sum(axis=(0, 1)) / count
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        else:
            mean, var = ra_mean.value, ra_var.value
        return mean, jax.lax.rsqrt(var + self.epsilon)


class DenseKernel(nn.Module):
    """The kernel [D, heads, head_dim] of a bias-free nn.DenseGeneral of that shape (same name, LeCun normal
    initialisation over the flattened [D, heads * head_dim]), returned rather than applied."""

    shape: tuple[int, int, int]

    @nn.compact
    def __call__(self) -> jax.Array:
        dim, heads, head_dim = self.shape

        def init(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
            return nn.initializers.lecun_normal()(rng, (dim, heads * head_dim)).reshape(shape)

        return self.param("kernel", init, self.shape)


def single_query_attention(
    x: jax.Array,
    mask: jax.Array,
    query: jax.Array,
    w_key: jax.Array,
    w_value: jax.Array,
    mean: jax.Array,
    inv_std: jax.Array,
) -> jax.Array:
    """Multi-head attention of one query over the normalised tokens z = (x - mean) * inv_std: x [B,N,D],
    mask bool [B,N], query [H,K], key and value kernels [D,H,K], mean and inv_std [D] -> float32 [B,H,K].

    Equal to softmax(q . (z W_k) / sqrt(K)) (z W_v), computed as softmax(x . (inv_std W_k q) / sqrt(K)) x,
    then minus mean, times inv_std, then W_v (the mean shifts every token's logit alike, and the softmax
    weights sum to 1): O(N D H) per example instead of O(N D^2), and z is never materialised.
    """
    head_dim = query.shape[-1]
    key_query = jnp.einsum("dhk,hk->hd", w_key, query) * (inv_std / jnp.sqrt(jnp.float32(head_dim)))
    # [B, N, H]: one plain [B*N, D] x [D, H] matmul (XLA:CPU runs the [B, H, N] layout about 9x slower)
    logits = jnp.einsum("bnd,hd->bnh", x, key_query)
    logits = jnp.where(mask[:, :, None], logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits, axis=1)
    pooled = (jnp.einsum("bnh,bnd->bhd", weights, x) - mean) * inv_std
    return jnp.einsum("bhd,dhk->bhk", pooled, w_value)


class ProbeHead(nn.Module):
    """Attentive probe: features [B,N,D], length [B] -> logits float32 [B, num_classes].

    The learned query [D] is split into heads directly (as in AIM); keys and values are Dense without bias.
    use_map_mlp adds big_vision's MAP block after pooling: x + MLP(LN(x)) with hidden width 4D.
    """

    num_classes: int
    num_heads: int
    use_map_mlp: bool = False

    @nn.compact
    def __call__(self, features: jax.Array, length: jax.Array, train: bool) -> jax.Array:
        batch, num_tokens, dim = features.shape
        if dim % self.num_heads:
            raise ValueError(f"probe width {dim} is not divisible by num_heads {self.num_heads}")
        head_dim = dim // self.num_heads
        mask = real_token_mask(length, num_tokens)
        x = features.astype(jnp.float32)
        mean, inv_std = MaskedBatchNorm(name="bn")(x, mask, train)
        query = self.param("query", nn.initializers.normal(0.02), (dim,))
        w_key = DenseKernel((dim, self.num_heads, head_dim), name="key")()
        w_value = DenseKernel((dim, self.num_heads, head_dim), name="value")()
        query = query.reshape(self.num_heads, head_dim)
        pooled = single_query_attention(x, mask, query, w_key, w_value, mean, inv_std)
        pooled = pooled.reshape(batch, dim)
        if self.use_map_mlp:
            y = nn.LayerNorm(epsilon=1e-6, name="map_norm")(pooled)
            pooled = pooled + MlpBlock(4 * dim, name="map_mlp")(y)
        return nn.Dense(self.num_classes, use_bias=False, name="classifier")(pooled)  # ml-aim: no bias


class ReferenceProbeHead(nn.Module):
    """The NARAIM reference's attentive probe: features [B,N,D], length [B] -> logits float32 [B, classes].

    A learned query [1,1,D] (LeCun normal, as the reference), multi-head attention with q/k/v/out Dense
    projections and biases, then Dense -> classes. The reference lets the query attend to padding; here
    padding keys are masked (docs/reproducing.md). `train` is unused (no BatchNorm).
    """

    num_classes: int
    num_heads: int

    @nn.compact
    def __call__(self, features: jax.Array, length: jax.Array, train: bool) -> jax.Array:
        del train
        batch, num_tokens, dim = features.shape
        features = features.astype(jnp.float32)
        query = self.param("query", nn.initializers.lecun_normal(), (1, 1, dim))
        mask = real_token_mask(length, num_tokens)[:, None, None, :]
        attention = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name="attention")
        pooled = attention(jnp.broadcast_to(query, (batch, 1, dim)), features, mask=mask)  # keys = values
        return nn.Dense(self.num_classes, name="classifier")(pooled[:, 0])


def pool_tokens(features: jax.Array, length: jax.Array, pool: str) -> jax.Array:
    """features [B,N,D], length [B] -> float32 [B,D]: mean over real tokens, or the token at length-1."""
    features = features.astype(jnp.float32)
    if pool == "mean":
        return mean_pool(features[:, None], length)[:, 0]
    if pool == "last":
        index = jnp.clip(length - 1, 0, features.shape[1] - 1)
        return jnp.take_along_axis(features, index[:, None, None], axis=1)[:, 0]
    raise ValueError(f"unknown pool {pool!r}; expected one of {POOLS}")


class PooledHead(nn.Module):
    """Pools the real tokens ('mean' | 'last'), Dense -> [B,C] (fine-tuning's descriptors)."""

    num_classes: int
    pool: str = "mean"

    @nn.compact
    def __call__(self, features: jax.Array, length: jax.Array, train: bool) -> jax.Array:
        return nn.Dense(self.num_classes, name="classifier")(pool_tokens(features, length, self.pool))


class LinearHead(nn.Module):
    """The linear probe on mean-pooled features [B, D] (`length` unused): BatchNorm without scale or bias,
    Dense -> [B, C]."""

    num_classes: int

    @nn.compact
    def __call__(self, pooled: jax.Array, length: jax.Array, train: bool) -> jax.Array:
        x = nn.BatchNorm(
            use_running_average=not train,
            use_bias=False,
            use_scale=False,
            momentum=0.9,
            epsilon=1e-6,
            name="bn",
        )(pooled.astype(jnp.float32))
        return nn.Dense(self.num_classes, name="classifier")(x)


def make_head(
    protocol: str,
    descriptor: str,
    num_classes: int,
    num_heads: int,
    use_map_mlp: bool,
    probe_head: str = "aim",
) -> nn.Module:
    """The head of a protocol: 'attentive' -> the attentive head `probe_head` ('aim': ProbeHead,
    'naraim_ref': ReferenceProbeHead), 'linear' -> BatchNorm + linear on pooled features, 'finetune' ->
    by `descriptor` ('last' | 'mean': linear on that token / mean; 'probe': the attentive head)."""
    if protocol == "attentive" or (protocol == "finetune" and descriptor == "probe"):
        if probe_head == "naraim_ref":
            return ReferenceProbeHead(num_classes, num_heads)
        return ProbeHead(num_classes, num_heads, use_map_mlp)
    if protocol == "linear":
        return LinearHead(num_classes)
    if protocol == "finetune":
        return PooledHead(num_classes, descriptor)
    raise ValueError(f"unknown protocol {protocol!r}")
