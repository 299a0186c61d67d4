"""The transformer MLP: Dense -> GELU -> Dense."""

import flax.linen as nn
import jax

from naraim.model.init import dense_kernel_init

GELUS = ("tanh", "exact")


class MlpBlock(nn.Module):
    """Dense(mlp_dim) -> GELU ('tanh' approximation, flax's default, or 'exact' erf) -> Dense(D).

    x [..., D] -> [..., D] in `dtype`; biases unless use_bias is False (AIM's trunk); kernels initialised
    by `weight_init` (naraim.model.init).
    """

    mlp_dim: int
    dtype: str = "float32"
    use_bias: bool = True
    gelu: str = "tanh"
    weight_init: str = "lecun"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = dict(
            dtype=self.dtype, use_bias=self.use_bias, kernel_init=dense_kernel_init(self.weight_init)
        )
        y = nn.Dense(self.mlp_dim, name="fc1", **dense)(x)
        y = nn.gelu(y, approximate=self.gelu == "tanh")
        return nn.Dense(x.shape[-1], name="fc2", **dense)(y)
