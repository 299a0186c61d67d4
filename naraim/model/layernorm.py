"""LayerNorm with its backward written out: the function and parameters of flax's nn.LayerNorm.

Autodiff of nn.LayerNorm multiplies the output cotangent by the scale [D] inside two feature-axis
reductions; XLA:CPU hands such reductions to YNNPACK, which needs the scale broadcast to a materialised
[B,N,D] array, written and read again in every norm of every block. The backward below is the same
formula, and lets XLA fuse each norm's gradient into a few passes.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


def _stats(x: jax.Array, epsilon: float) -> tuple[jax.Array, jax.Array]:
    """float32 mean and 1/sqrt(var + epsilon) over the last axis, [..., 1] each (var = E[x^2] - E[x]^2)."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.maximum(jnp.mean(jnp.square(x), -1, keepdims=True) - jnp.square(mean), 0.0)
    return mean, jax.lax.rsqrt(var + epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, dtype) -> jax.Array:
    """x [..., D], scale and bias float32 [D] -> (x - mean) * (rsqrt(var + eps) * scale) + bias in `dtype`."""
    return _forward(x, scale, bias, epsilon, dtype)[0]


def _forward(x, scale, bias, epsilon, dtype):
    mean, rstd = _stats(x, epsilon)
    return ((x - mean) * (rstd * scale) + bias).astype(dtype), (x, mean, rstd, scale)


def _backward(epsilon, dtype, residuals, dy):
    x, mean, rstd, scale = residuals
    dy = dy.astype(jnp.float32)
    xhat = (x - mean) * rstd
    g = dy * scale
    dx = rstd * (g - jnp.mean(g, -1, keepdims=True) - xhat * jnp.mean(g * xhat, -1, keepdims=True))
    batch_axes = tuple(range(dy.ndim - 1))
    return dx.astype(x.dtype), jnp.sum(dy * xhat, batch_axes), jnp.sum(dy, batch_axes)


layer_norm.defvjp(_forward, _backward)


class LayerNorm(nn.Module):
    """nn.LayerNorm over the last axis (statistics in float32): params 'scale' (ones) and 'bias' (zeros),
    float32 [D]; output in `dtype`."""

    epsilon: float = 1e-6
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [..., D] -> [..., D] in self.dtype."""
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
        return layer_norm(x, scale, bias, self.epsilon, jnp.dtype(self.dtype))
