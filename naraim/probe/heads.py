"""Classification heads over backbone features [B,N,D] with `length` [B] real tokens per example.

- attentive probe: naraim.model.probe_head.ProbeHead (AIM's BatchNorm + attention pooling + linear);
- linear probe: BatchNorm (no scale or bias) on the mean of the real tokens, then a linear layer;
- fine-tuning descriptors: the last real token's output, the mean of the real tokens, or the ProbeHead.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from naraim.model.probe_head import ProbeHead, ReferenceProbeHead, real_token_mask

POOLS = ("mean", "last")
DESCRIPTORS = ("last", "mean", "probe")
PROBE_HEADS = ("aim", "naraim_ref")


def pool_tokens(features: jax.Array, length: jax.Array, pool: str) -> jax.Array:
    """features [B,N,D], length [B] -> float32 [B,D]: mean over real tokens, or the token at length-1."""
    features = features.astype(jnp.float32)
    if pool == "mean":
        w = real_token_mask(length, features.shape[1]).astype(jnp.float32)[..., None]
        return (features * w).sum(axis=1) / jnp.maximum(w.sum(axis=1), 1.0)
    if pool == "last":
        index = jnp.clip(length - 1, 0, features.shape[1] - 1)
        return jnp.take_along_axis(features, index[:, None, None], axis=1)[:, 0]
    raise ValueError(f"unknown pool {pool!r}; expected one of {POOLS}")


class PooledHead(nn.Module):
    """Pools the real tokens ('mean' | 'last'), optional BatchNorm without scale/bias, Dense -> [B,C]."""

    num_classes: int
    pool: str = "mean"
    batch_norm: bool = False

    @nn.compact
    def __call__(self, features: jax.Array, length: jax.Array, train: bool) -> jax.Array:
        x = pool_tokens(features, length, self.pool)
        if self.batch_norm:
            x = nn.BatchNorm(
                use_running_average=not train,
                use_bias=False,
                use_scale=False,
                momentum=0.9,
                epsilon=1e-6,
                name="bn",
            )(x)
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
    'naraim_ref': ReferenceProbeHead), 'linear' -> BatchNorm + linear on mean-pooled tokens, 'finetune' ->
    by `descriptor` ('last' | 'mean': linear on that token / mean; 'probe': the attentive head)."""
    if protocol == "attentive" or (protocol == "finetune" and descriptor == "probe"):
        if probe_head == "naraim_ref":
            return ReferenceProbeHead(num_classes, num_heads)
        return ProbeHead(num_classes, num_heads, use_map_mlp)
    if protocol == "linear":
        return PooledHead(num_classes, "mean", batch_norm=True)
    if protocol == "finetune":
        return PooledHead(num_classes, descriptor)
    raise ValueError(f"unknown protocol {protocol!r}")
