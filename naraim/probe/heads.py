"""Classification heads over backbone features [B,N,D] with `length` [B] real tokens per example.

- attentive probe: naraim.model.probe_head.ProbeHead (AIM's BatchNorm + attention pooling + linear);
- linear probe: BatchNorm (no scale or bias) on the mean of the real tokens (pooled before the head, so the
  feature cache holds [D] per block and example, not [N, D]), then a linear layer;
- fine-tuning descriptors: the last real token's output, the mean of the real tokens, or the ProbeHead.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from naraim.model.probe_head import ProbeHead, ReferenceProbeHead
from naraim.probe.features import mean_pool

POOLS = ("mean", "last")
DESCRIPTORS = ("last", "mean", "probe")
PROBE_HEADS = ("aim", "naraim_ref")


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
