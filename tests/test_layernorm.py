"""naraim's LayerNorm is flax's nn.LayerNorm: same parameters, outputs and gradients (its backward is
hand-written, so the gradients are checked against autodiff of flax's)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from naraim.model.layernorm import LayerNorm


def _inputs(dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 5, 16)) * 2.0 + 0.7).astype(np.float32)
    params = {
        "scale": jnp.asarray(rng.uniform(0.5, 1.5, 16), jnp.float32),
        "bias": jnp.asarray(rng.standard_normal(16), jnp.float32),
    }
    cotangent = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    return jnp.asarray(x, dtype), params, cotangent


def test_parameters_match_flax():
    x = jnp.ones((2, 4, 8))
    ours = LayerNorm().init(jax.random.PRNGKey(0), x)["params"]
    flax_params = nn.LayerNorm().init(jax.random.PRNGKey(0), x)["params"]
    assert jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), ours) == jax.tree_util.tree_map(
        lambda a: (a.shape, a.dtype), flax_params
    )
    np.testing.assert_array_equal(ours["scale"], flax_params["scale"])
    np.testing.assert_array_equal(ours["bias"], flax_params["bias"])


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_outputs_and_gradients_match_flax(dtype, tol):
    x, params, cotangent = _inputs(dtype)
    ours, flax_ln = LayerNorm(epsilon=1e-6, dtype=dtype), nn.LayerNorm(epsilon=1e-6, dtype=dtype)

    def loss(module, p, x):
        y = module.apply({"params": p}, x)
        assert y.dtype == dtype
        return jnp.sum(y.astype(jnp.float32) * cotangent)

    y_ours = ours.apply({"params": params}, x)
    y_flax = flax_ln.apply({"params": params}, x)
    np.testing.assert_allclose(np.float32(y_ours), np.float32(y_flax), atol=tol, rtol=tol)
    g_ours = jax.grad(lambda p, x: loss(ours, p, x), argnums=(0, 1))(params, x)
    g_flax = jax.grad(lambda p, x: loss(flax_ln, p, x), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree_util.tree_leaves(g_ours), jax.tree_util.tree_leaves(g_flax), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(np.float32(a), np.float32(b), atol=tol, rtol=tol)


def test_constant_rows_stay_finite():
    """A row with zero variance normalises to the bias, with finite gradients (epsilon guards rsqrt)."""
    x = jnp.full((1, 2, 8), 3.0)
    params = {"scale": jnp.ones(8), "bias": jnp.arange(8.0)}
    y = LayerNorm().apply({"params": params}, x)
    np.testing.assert_allclose(y[0, 0], np.arange(8.0), atol=1e-6)
    grads = jax.grad(lambda x: jnp.sum(LayerNorm().apply({"params": params}, x) ** 2))(x)
    assert np.isfinite(np.asarray(grads)).all()
