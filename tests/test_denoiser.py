"""DARL denoising patch decoder: shapes, per-position independence, gamma conditioning, depth."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from naraim.model.denoiser import Denoiser, make_denoiser

B, N, D, K = 2, 5, 16, 12


def inputs(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return jax.random.normal(k1, (B, N, D)), jax.random.normal(k2, (B, N, K)), jax.random.uniform(k3, (B, N))


def test_output_shape_and_positions_are_independent():
    head = Denoiser(patch_dim=K, width=32, heads=4, mlp_dim=64)
    feats, noisy, gamma = inputs()
    params = head.init(jax.random.key(1), feats, noisy, gamma)
    out = head.apply(params, feats, noisy, gamma)
    assert out.shape == (B, N, K) and out.dtype == jnp.float32
    # Changing position 3's inputs changes only position 3's output.
    out2 = head.apply(params, feats.at[:, 3].add(1.0), noisy.at[:, 3].add(1.0), gamma.at[:, 3].set(0.9))
    changed = np.abs(np.asarray(out2 - out)).max(-1) > 1e-6
    np.testing.assert_array_equal(changed, np.broadcast_to(np.arange(N) == 3, (B, N)))


def test_gamma_is_an_input_channel_only_when_given():
    feats, noisy, gamma = inputs()
    head = Denoiser(patch_dim=K, width=32, heads=4, mlp_dim=64)
    with_gamma = head.init(jax.random.key(1), feats, noisy, gamma)
    without = head.init(jax.random.key(1), feats, noisy, None)
    assert with_gamma["params"]["embed_noisy"]["kernel"].shape == (K + 1, 32)
    assert without["params"]["embed_noisy"]["kernel"].shape == (K, 32)
    a = head.apply(with_gamma, feats, noisy, gamma)
    b = head.apply(with_gamma, feats, noisy, gamma * 0.5)
    assert float(jnp.abs(a - b).max()) > 1e-5


def test_make_denoiser_reads_depth_and_defaults_to_backbone_width():
    cfg = ml_collections.ConfigDict({"dtype": "float32", "denoiser": {"depth": 2, "width": 0, "heads": 0}})
    head = make_denoiser(cfg, patch_dim=K, backbone_width=D, backbone_heads=2)
    assert (head.width, head.heads, head.depth, head.mlp_dim) == (D, 2, 2, 4 * D)
    feats, noisy, gamma = inputs()
    params = head.init(jax.random.key(0), feats, noisy, None)["params"]
    assert {"block_0", "block_1"} <= set(params) and "block_2" not in params
