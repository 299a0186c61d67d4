"""DARL diffusion: signal levels, forward-process moments, no-noise limit, DDPM sampling."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from probe_helpers import load_config

from naraim.data.pipeline import make_train_iterator
from naraim.errors import UserError
from naraim.infra.mesh import global_batch, make_mesh
from naraim.infra.optimizer import make_optimizer
from naraim.model.model import make_model
from naraim.objectives import diffusion
from naraim.objectives.config import default_loss_config, validate_loss_config
from naraim.objectives.mse import per_patch_error
from naraim.objectives.targets import patch_targets
from naraim.train.config import validate_pretrain_config
from naraim.train.step import init_state, make_train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CFG = {"beta_a": 1.0, "beta_b": 3.0, "predict": "x0", "append_gamma": True}


def test_signal_levels_follow_beta_moments():
    g = diffusion.sample_signal_levels(jax.random.key(0), (200_000,), 2.0, 5.0)
    assert float(g.min()) >= 0.0 and float(g.max()) <= 1.0
    np.testing.assert_allclose(float(g.mean()), 2.0 / 7.0, atol=3e-3)
    np.testing.assert_allclose(float(g.var()), 2.0 * 5.0 / (49.0 * 8.0), atol=2e-3)


@pytest.mark.parametrize("gamma", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_forward_process_moments_for_given_gamma(gamma):
    x0 = jnp.linspace(-2.0, 2.0, 48)
    eps = jax.random.normal(jax.random.key(1), (100_000, 48))
    x_t = diffusion.forward_process(jnp.broadcast_to(x0, eps.shape), jnp.full((100_000,), gamma), eps)
    np.testing.assert_allclose(x_t.mean(0), np.sqrt(gamma) * x0, atol=0.02)
    np.testing.assert_allclose(x_t.var(0), np.full(48, 1.0 - gamma), atol=0.02)


def test_corrupt_targets_draws_one_level_per_patch():
    targets = jax.random.normal(jax.random.key(2), (3, 5, 12))
    inputs, target = diffusion.corrupt_targets(jax.random.key(3), targets, CFG)
    assert inputs["noisy"].shape == targets.shape and inputs["gamma"].shape == (3, 5)
    assert len(np.unique(np.asarray(inputs["gamma"]))) == 15
    np.testing.assert_array_equal(target, targets)
    eps_cfg = dict(CFG, predict="eps", append_gamma=False)
    no_gamma, eps = diffusion.corrupt_targets(jax.random.key(3), targets, eps_cfg)
    assert no_gamma["gamma"] is None
    rebuilt = diffusion.forward_process(targets, inputs["gamma"], eps)
    np.testing.assert_allclose(rebuilt, no_gamma["noisy"], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("norm_pix", [False, True])
def test_no_noise_reduces_to_mse_objective(monkeypatch, norm_pix):
    """With g = 1 the decoder sees the clean MSE target and is scored against it exactly like the MSE loss."""
    monkeypatch.setattr(diffusion, "sample_signal_levels", lambda rng, shape, a, b: jnp.ones(shape))
    model = make_model(dict(variant="Pico/4", head="denoising", attention="causal", sos_token=True))
    rng = np.random.default_rng(0)
    inputs = {
        "patches": jnp.asarray(rng.integers(0, 256, (2, 6, 48)), jnp.uint8),
        "coords": jnp.asarray(np.stack(np.divmod(np.arange(6), 3), -1)[None].repeat(2, 0), jnp.int32),
        "grid": jnp.array([[2, 3]] * 2, jnp.int32),
        "length": jnp.array([6, 4], jnp.int32),
    }
    loss_cfg = {**default_loss_config(), "norm_pix": norm_pix, "objective": "diffusion", "diffusion": CFG}
    params = model.init(jax.random.key(0), inputs, head_inputs=diffusion.init_head_inputs(loss_cfg, 2, 6, 48))
    err = diffusion.denoising_error(model, params["params"], inputs, jax.random.key(1), loss_cfg)
    targets = patch_targets(inputs["patches"], norm_pix, "symmetric")
    clean_inputs = {"noisy": targets, "gamma": jnp.ones((2, 6))}
    pred = model.apply(params, inputs, head_inputs=clean_inputs)["pred"]
    np.testing.assert_allclose(
        err, per_patch_error(pred, inputs["patches"], norm_pix, "symmetric"), rtol=1e-5, atol=1e-6
    )


def loss_config(**overrides):
    return {**default_loss_config(), "diffusion": CFG, **overrides}


def test_validate_objective_pairs_head_and_objective():
    validate_loss_config(loss_config(objective="mse"), "linear")
    validate_loss_config(loss_config(objective="diffusion"), "denoising")
    for objective, head in [("mse", "denoising"), ("diffusion", "linear"), ("l1", "linear")]:
        with pytest.raises(UserError, match="loss.objective"):
            validate_loss_config(loss_config(objective=objective), head)


def test_predicted_x0_inverts_eps_parameterisation():
    x0 = jax.random.normal(jax.random.key(7), (4, 12))
    eps = jax.random.normal(jax.random.key(8), (4, 12))
    gamma = jnp.array([0.2, 0.5, 0.7, 0.99])
    x_t = diffusion.forward_process(x0, gamma, eps)
    np.testing.assert_allclose(diffusion.predicted_x0(eps, x_t, gamma, "eps"), x0, atol=1e-4)
    np.testing.assert_array_equal(diffusion.predicted_x0(x0, x_t, gamma, "x0"), x0)


def test_ddpm_with_exact_denoiser_recovers_the_patch():
    x0 = jax.random.normal(jax.random.key(9), (3, 12))
    sample = diffusion.ddpm_sample(jax.random.key(10), lambda x_t, g: x0, x0.shape, num_steps=8)
    np.testing.assert_allclose(sample, x0, atol=1e-5)


def test_ddpm_posterior_has_forward_marginals():
    # Data x0 = 0: x_t ~ N(0, 1 - g_t); one step to g_s must give N(0, 1 - g_s).
    x_t = jnp.sqrt(1 - 0.3) * jax.random.normal(jax.random.key(11), (200_000,))
    x_s = diffusion.ddpm_step(jax.random.key(12), x_t[:, None], jnp.zeros((200_000, 1)), 0.3, 0.6)
    np.testing.assert_allclose(float(x_s.var()), 0.4, atol=0.01)


def test_validate_config_rejects_bad_values():
    with pytest.raises(UserError, match="beta_a"):
        validate_loss_config(loss_config(objective="diffusion", diffusion=dict(CFG, beta_a=0.0)), "denoising")
    with pytest.raises(UserError, match="predict"):
        validate_loss_config(
            loss_config(objective="diffusion", diffusion=dict(CFG, predict="v")), "denoising"
        )
    for key in ("average", "raw_scale"):
        with pytest.raises(UserError, match=f"loss.{key}"):
            validate_loss_config(loss_config(**{key: "bogus"}), "linear")
    with pytest.raises(UserError, match="num_steps"):
        diffusion.sampling_signal_levels(0)


def demo_darl_config(**overrides):
    cfg = load_config("demo", "darl")
    cfg.batch_size, cfg.data.image_size, cfg.data.max_tokens, cfg.total_steps = 8, 32, 16, 20
    cfg.optim.warmup_steps, cfg.optim.cooldown_steps = 2, 1
    cfg.update(overrides)
    return cfg


@pytest.mark.slow
def test_diffusion_loss_decreases_on_tiny_demo():
    """The demo's DARL recipe, with gradient accumulation and a round-robin ordering on top."""
    cfg = demo_darl_config(micro_batches=2)
    cfg.data.ordering = "round_robin(2)"
    validate_pretrain_config(cfg, num_devices=1)
    mesh = make_mesh()
    model = make_model(cfg.model)
    optimizer, schedule = make_optimizer(cfg.optim, cfg.total_steps)
    state, shardings = init_state(model, optimizer, cfg, mesh)
    assert "embed_noisy" in state["params"]["head"]
    step = make_train_step(model, optimizer, schedule, cfg, mesh, shardings)
    it = make_train_iterator(cfg.data, patch_size=8, global_batch_size=cfg.batch_size, seed=0)
    losses = []
    for _ in range(cfg.total_steps):
        state, metrics = step(state, global_batch(next(it), mesh))
        losses.append(float(metrics["loss"]))
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
