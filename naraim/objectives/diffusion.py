"""DARL's per-patch diffusion: Beta-distributed signal levels, the forward process, DDPM ancestral steps.

Every target patch is corrupted independently. The signal level g in [0, 1] ("gamma", DDPM's
alpha-bar) is drawn per patch from Beta(a, b); small g means heavy noise. The forward process is
x_t = sqrt(g) x_0 + sqrt(1 - g) eps with eps ~ N(0, I). The denoising decoder sees x_t (and
optionally g) and predicts x_0 (default) or eps. Shapes: patches [..., D] (D = P*P*3 target
values, in the trainer's target units), signal levels [...] (one per patch).
"""

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from naraim.errors import UserError
from naraim.objectives.targets import patch_targets

PREDICT_CHOICES = ("x0", "eps")
# Smallest signal level used when an eps prediction is turned back into x_0 (division by sqrt(g)).
MIN_GAMMA_FOR_EPS = 1e-3


def sample_signal_levels(rng: jax.Array, shape: tuple[int, ...], beta_a: float, beta_b: float) -> jax.Array:
    """Signal levels g ~ Beta(beta_a, beta_b), float32 of `shape` (one per patch)."""
    return jax.random.beta(rng, beta_a, beta_b, shape, dtype=jnp.float32)


def forward_process(x0: jax.Array, gamma: jax.Array, eps: jax.Array) -> jax.Array:
    """x_t = sqrt(g) x_0 + sqrt(1 - g) eps. x0, eps: [..., D]; gamma: [...]. Returns [..., D]."""
    g = gamma[..., None].astype(x0.dtype)
    return jnp.sqrt(g) * x0 + jnp.sqrt(1.0 - g) * eps


def corrupt_targets(
    rng: jax.Array, targets: jax.Array, diffusion_cfg: Mapping[str, Any]
) -> tuple[dict[str, jax.Array], jax.Array]:
    """Draws g and eps per patch and corrupts `targets` [B, N, D] (float32, target units).

    Returns (head_inputs, regression_target): head_inputs as `head_inputs` builds them, for
    Model(..., head_inputs=...); regression_target [B,N,D] is x_0 (predict='x0') or eps.
    """
    rng_gamma, rng_eps = jax.random.split(rng)
    gamma = sample_signal_levels(
        rng_gamma, targets.shape[:-1], float(diffusion_cfg["beta_a"]), float(diffusion_cfg["beta_b"])
    )
    eps = jax.random.normal(rng_eps, targets.shape, jnp.float32)
    noisy = forward_process(targets, gamma, eps)
    regression_target = targets if diffusion_cfg["predict"] == "x0" else eps
    return head_inputs(noisy, gamma, bool(diffusion_cfg["append_gamma"])), regression_target


def head_inputs(noisy: jax.Array, gamma: jax.Array, append_gamma: bool) -> dict[str, jax.Array | None]:
    """The denoising head's extra inputs: {'noisy': x_t [B,N,D], 'gamma': g [B,N], or None when the
    decoder is not conditioned on the signal level (loss.diffusion.append_gamma=False)}."""
    return {"noisy": noisy, "gamma": gamma if append_gamma else None}


def predicted_x0(pred: jax.Array, x_t: jax.Array, gamma: jax.Array, predict: str) -> jax.Array:
    """x_0 estimate from the decoder output `pred` [..., D] at x_t [..., D], signal level gamma [...]."""
    if predict == "x0":
        return pred
    g = jnp.maximum(gamma, MIN_GAMMA_FOR_EPS)[..., None]
    return (x_t - jnp.sqrt(1.0 - g) * pred) / jnp.sqrt(g)


def sampling_signal_levels(num_steps: int) -> jax.Array:
    """Signal levels visited by the sampler: num_steps + 1 values rising linearly from 0 (pure noise) to 1."""
    if num_steps < 1:
        raise UserError(f"num_steps={num_steps} must be >= 1 for DDPM sampling")
    return jnp.linspace(0.0, 1.0, num_steps + 1, dtype=jnp.float32)


def ddpm_step(
    rng: jax.Array, x_t: jax.Array, x0_hat: jax.Array, gamma_t: jax.Array, gamma_s: jax.Array
) -> jax.Array:
    """One ancestral step x_t -> x_s (gamma_s > gamma_t) from the posterior q(x_s | x_t, x_0 = x0_hat).

    With alpha = gamma_t / gamma_s the posterior is Gaussian with
      mean = sqrt(gamma_s) (1 - alpha) / (1 - gamma_t) x0_hat + sqrt(alpha) (1 - gamma_s) / (1 - gamma_t) x_t
      var  = (1 - alpha) (1 - gamma_s) / (1 - gamma_t).
    x_t, x0_hat: [..., D]; gamma_t, gamma_s: scalars or [...]. At gamma_s = 1 it returns x0_hat.
    """
    gamma_t = jnp.asarray(gamma_t, jnp.float32)[..., None]
    gamma_s = jnp.asarray(gamma_s, jnp.float32)[..., None]
    alpha = gamma_t / gamma_s
    one_minus_t = jnp.maximum(1.0 - gamma_t, 1e-12)
    coef_x0 = jnp.sqrt(gamma_s) * (1.0 - alpha) / one_minus_t
    mean = coef_x0 * x0_hat + jnp.sqrt(alpha) * (1.0 - gamma_s) / one_minus_t * x_t
    var = jnp.maximum((1.0 - alpha) * (1.0 - gamma_s) / one_minus_t, 0.0)
    return mean + jnp.sqrt(var) * jax.random.normal(rng, x_t.shape, x_t.dtype)


def ddpm_sample(
    rng: jax.Array,
    denoise: Any,
    shape: tuple[int, ...],
    num_steps: int,
    predict: str = "x0",
) -> jax.Array:
    """Ancestral DDPM sampling of patches of `shape` [..., D] from pure noise.

    denoise(x_t [..., D], gamma [...]) -> decoder output [..., D] (x_0 or eps per `predict`).
    The signal level rises linearly from 0 to 1 over `num_steps` steps; returns x_0 samples [..., D].
    """
    levels = sampling_signal_levels(num_steps)
    rng_init, rng_steps = jax.random.split(rng)
    x_init = jax.random.normal(rng_init, shape, jnp.float32)

    def step(x_t: jax.Array, i: jax.Array) -> tuple[jax.Array, None]:
        gamma_t, gamma_s = levels[i], levels[i + 1]
        gamma_map = jnp.full(shape[:-1], gamma_t, jnp.float32)
        x0_hat = predicted_x0(denoise(x_t, gamma_map), x_t, gamma_map, predict)
        return ddpm_step(jax.random.fold_in(rng_steps, i), x_t, x0_hat, gamma_t, gamma_s), None

    x0, _ = jax.lax.scan(step, x_init, jnp.arange(num_steps))
    return x0


def init_head_inputs(loss_cfg: Mapping[str, Any], batch_size: int, num_tokens: int, patch_dim: int):
    """Zero head inputs of the run's static shapes for model.init (None for the MSE objective)."""
    if loss_cfg["objective"] != "diffusion":
        return None
    noisy = jnp.zeros((batch_size, num_tokens, patch_dim), jnp.float32)
    gamma = jnp.zeros((batch_size, num_tokens), jnp.float32)
    return head_inputs(noisy, gamma, loss_cfg["diffusion"]["append_gamma"])


def denoising_error(
    model: Any,
    params: Any,
    inputs: Mapping[str, jax.Array],
    rng: jax.Array,
    loss_cfg: Mapping[str, Any],
    **kwargs: Any,
) -> jax.Array:
    """The diffusion objective per patch: float32 [B,N] mean-over-subpixels squared error of the decoder
    output against x_0 (or eps) for targets corrupted with per-patch g ~ Beta(a, b).
    kwargs go to model.apply (attention, prefix_length)."""
    pixel_scale = loss_cfg.get("target_pixel_scale", "unit")
    targets = patch_targets(inputs["patches"], loss_cfg["norm_pix"], loss_cfg["raw_scale"], pixel_scale)
    extra, regression_target = corrupt_targets(rng, targets, loss_cfg["diffusion"])
    pred = model.apply({"params": params}, inputs, head_inputs=extra, **kwargs)["pred"]
    return jnp.mean(jnp.square(pred - regression_target), axis=-1)


def pure_noise_prediction(
    model: Any,
    params: Any,
    inputs: Mapping[str, jax.Array],
    rng: jax.Array,
    loss_cfg: Mapping[str, Any],
    **kwargs: Any,
) -> jax.Array:
    """The decoder's x_0 estimate [B,N,D] from pure noise (g = 0), i.e. from the context alone: what
    evaluation plots as the diffusion model's next-patch prediction. Meaningful for predict='x0'; an eps
    prediction is turned into x_0 with g clamped at MIN_GAMMA_FOR_EPS, which amplifies its error."""
    shape = inputs["patches"].shape
    eps = jax.random.normal(rng, shape, jnp.float32)
    gamma = jnp.zeros(shape[:-1], jnp.float32)
    extra = head_inputs(eps, gamma, loss_cfg["diffusion"]["append_gamma"])
    pred = model.apply({"params": params}, inputs, head_inputs=extra, **kwargs)["pred"]
    return predicted_x0(pred, eps, gamma, loss_cfg["diffusion"]["predict"])
