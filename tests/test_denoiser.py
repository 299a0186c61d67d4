"""DARL denoising patch decoder: shapes, per-position independence, gamma conditioning, depth."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from naraim.model.denoiser import Denoiser, make_denoiser
from naraim.model.model import make_model
from naraim.objectives import diffusion
from naraim.objectives.config import default_loss_config

B, N, D, K = 2, 5, 16, 12


def inputs(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return jax.random.normal(k1, (B, N, D)), jax.random.normal(k2, (B, N, K)), jax.random.uniform(k3, (B, N))


def test_output_shape_and_positions_are_independent():
    head = Denoiser(patch_dim=K, width=32, heads=4, mlp_dim=64)
    feats, noisy, gamma = inputs()
    params = jax.jit(head.init)(jax.random.key(1), feats, noisy, gamma)
    apply = jax.jit(head.apply)
    out = apply(params, feats, noisy, gamma)
    assert out.shape == (B, N, K) and out.dtype == jnp.float32
    # Changing position 3's inputs changes only position 3's output.
    out2 = apply(params, feats.at[:, 3].add(1.0), noisy.at[:, 3].add(1.0), gamma.at[:, 3].set(0.9))
    changed = np.abs(np.asarray(out2 - out)).max(-1) > 1e-6
    np.testing.assert_array_equal(changed, np.broadcast_to(np.arange(N) == 3, (B, N)))


def test_gamma_is_an_input_channel_only_when_given():
    feats, noisy, gamma = inputs()
    head = Denoiser(patch_dim=K, width=32, heads=4, mlp_dim=64)
    with_gamma = jax.jit(head.init)(jax.random.key(1), feats, noisy, gamma)
    without = jax.eval_shape(head.init, jax.random.key(1), feats, noisy, None)
    assert with_gamma["params"]["embed_noisy"]["kernel"].shape == (K + 1, 32)
    assert without["params"]["embed_noisy"]["kernel"].shape == (K, 32)
    apply = jax.jit(head.apply)
    a = apply(with_gamma, feats, noisy, gamma)
    b = apply(with_gamma, feats, noisy, gamma * 0.5)
    assert float(jnp.abs(a - b).max()) > 1e-5


def test_make_denoiser_reads_depth_and_defaults_to_backbone_width():
    cfg = ml_collections.ConfigDict({"dtype": "float32", "denoiser": {"depth": 2, "width": 0, "heads": 0}})
    head = make_denoiser(cfg, patch_dim=K, backbone_width=D, backbone_heads=2)
    assert (head.width, head.heads, head.depth, head.mlp_dim) == (D, 2, 2, 4 * D)
    feats, noisy, gamma = inputs()
    params = jax.eval_shape(head.init, jax.random.key(0), feats, noisy, None)["params"]
    assert {"block_0", "block_1"} <= set(params) and "block_2" not in params


@pytest.mark.parametrize(
    "posemb,attention,sos",
    [
        ("absolute_sincos_2d", "prefix_causal", False),
        ("fractional", "bidirectional", False),
        ("learned", "causal", True),
        ("rope_1d", "prefix_causal", True),
        ("rope_2d", "causal", True),
        ("none", "causal", False),
    ],
)
def test_denoising_objective_composes_with_posembs_and_attention(posemb, attention, sos):
    """The diffusion loss and its gradient trace for each position embedding and attention mode."""
    model_cfg = dict(variant="Pico/4", head="denoising", posemb=posemb, attention=attention, sos_token=sos)
    model = make_model(model_cfg)
    loss_cfg = {**default_loss_config(), "objective": "diffusion"}
    inputs = {
        "patches": jnp.zeros((B, N, 48), jnp.uint8),
        "coords": jnp.zeros((B, N, 2), jnp.int32),
        "grid": jnp.array([[1, N]] * B, jnp.int32),
        "length": jnp.array([N, 3], jnp.int32),
    }
    head_inputs = diffusion.init_head_inputs(loss_cfg, B, N, 48)
    params = jax.eval_shape(model.init, jax.random.key(0), inputs, head_inputs=head_inputs)["params"]
    prefix = jnp.array([2, 1], jnp.int32) if attention == "prefix_causal" else None

    def loss(p):
        rng = jax.random.key(1)
        err = diffusion.denoising_error(model, p, inputs, rng, loss_cfg, prefix_length=prefix)
        return err.mean()

    value, grads = jax.eval_shape(jax.value_and_grad(loss), params)
    assert value.shape == () and set(grads) == {"backbone", "head"}
