"""Train state and the single jitted pre-training step (gradient accumulation, prefix draw, NaN guard)."""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from naraim.data.config import token_budget
from naraim.infra.mesh import DATA_AXIS, state_shardings
from naraim.model.model import MODEL_INPUTS
from naraim.model.sizes import patch_size
from naraim.objectives import diffusion
from naraim.objectives.mse import loss_weights, per_patch_error, target_shares


def dummy_batch(cfg: ConfigDict, batch_size: int) -> dict:
    """Zero inputs with the run's static shapes (length 1), for initialisation and shape inference."""
    p = patch_size(cfg.model.variant)
    n = token_budget(cfg.data, p)
    return {
        "patches": jnp.zeros((batch_size, n, p * p * 3), jnp.uint8),
        "coords": jnp.zeros((batch_size, n, 2), jnp.int32),
        "grid": jnp.ones((batch_size, 2), jnp.int32),
        "length": jnp.ones((batch_size,), jnp.int32),
    }


def draw_prefix(rng, length, attention: str, sos_token: bool):
    """Per-example prefix length (int32 [B], or None) and first target index in the loss (int32 [B]).

    prefix_causal: k uniform in {1, ..., length-1} (k = 1 when length == 1); targets j < k are not in the
    loss.
    causal: no prefix; the first target is 0 with an SOS token, else 1 (patch 0 has nothing to predict it
    from).
    """
    if attention == "prefix_causal":
        u = jax.random.uniform(rng, length.shape)
        span = jnp.maximum(length - 1, 1)
        k = 1 + jnp.minimum(jnp.floor(u * span).astype(jnp.int32), span - 1)
        return k, k
    first = jnp.full(length.shape, 0 if sos_token else 1, jnp.int32)
    return None, first


def init_state(model: nn.Module, optimizer: optax.GradientTransformation, cfg: ConfigDict, mesh: Mesh):
    """Creates {'params', 'opt_state', 'step', 'rng'} directly in its (replicated or FSDP) sharding.

    Returns (state, shardings).
    """

    def init():
        rng = jax.random.PRNGKey(cfg.seed)
        batch = dummy_batch(cfg, 1)
        head_inputs = diffusion.init_head_inputs(cfg.loss, 1, *batch["patches"].shape[1:])
        params = model.init(jax.random.fold_in(rng, 0), batch, head_inputs=head_inputs)["params"]
        return {
            "params": params,
            "opt_state": optimizer.init(params),
            "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.fold_in(rng, 1),
        }

    shardings = state_shardings(mesh, jax.eval_shape(init), cfg.mesh.fsdp)
    return jax.jit(init, out_shardings=shardings)(), shardings


def make_train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    cfg: ConfigDict,
    mesh: Mesh,
    shardings,
) -> Callable:
    """Returns step(state, batch) -> (state, metrics), jitted once with the state donated.

    batch: the global batch contract arrays sharded along 'data'. The loss is the per-patch squared error
    averaged over the targets of the global batch as loss.average says; with cfg.micro_batches = M the batch
    is split into M strided micro-batches (each spans every device) whose gradients are summed inside a
    lax.scan. If the loss or the gradient norm is not finite the state is returned unchanged and
    metrics['finite'] is False.
    """
    num_micro = cfg.micro_batches
    norm_pix, raw_scale, pixel_scale = cfg.loss.norm_pix, cfg.loss.raw_scale, cfg.loss.target_pixel_scale
    attention = cfg.model.attention
    sos = bool(cfg.model.get("sos_token", False))
    micro_sharding = NamedSharding(mesh, P(None, DATA_AXIS))

    def weighted_error(params, inputs, prefix, weights, noise_rng):
        if cfg.loss.objective == "diffusion":  # DARL: denoise per-patch corrupted targets
            err = diffusion.denoising_error(model, params, inputs, noise_rng, cfg.loss, prefix_length=prefix)
            return jnp.sum(err * weights)
        out = model.apply({"params": params}, inputs, prefix_length=prefix)
        err = per_patch_error(out["pred"], inputs["patches"], norm_pix, raw_scale, pixel_scale)
        return jnp.sum(err * weights)

    def step(state, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])
        inputs = {k: batch[k] for k in MODEL_INPUTS}
        prefix, first = draw_prefix(rng, inputs["length"], attention, sos)
        num_tokens = inputs["patches"].shape[1]
        weights = loss_weights(inputs["length"], first, num_tokens)
        # each target's share of the mean: the loss and its gradients come out normalised, with no pass
        # over the gradients to divide them
        shares = target_shares(weights, cfg.loss.average, num_tokens if sos else num_tokens - 1)
        grad_fn = jax.value_and_grad(weighted_error)
        noise_rng = jax.random.fold_in(rng, 1)
        if num_micro == 1:
            loss, grads = grad_fn(state["params"], inputs, prefix, shares, noise_rng)
        else:

            def split(x):
                x = x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:]).swapaxes(0, 1)
                return jax.lax.with_sharding_constraint(x, micro_sharding)

            noise_rngs = jax.random.split(noise_rng, num_micro)
            xs = (*jax.tree_util.tree_map(split, (inputs, prefix, shares)), noise_rngs)

            def accumulate(carry, micro):
                e, g = grad_fn(state["params"], *micro)
                return jax.tree_util.tree_map(jnp.add, carry, (e, g)), None

            zero = (jnp.zeros((), jnp.float32), jax.tree_util.tree_map(jnp.zeros_like, state["params"]))
            (loss, grads), _ = jax.lax.scan(accumulate, zero, xs)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def update(params, opt_state, grads):
            updates, opt_state = optimizer.update(grads, opt_state, params, grad_norm=grad_norm)
            return optax.apply_updates(params, updates), opt_state

        # a cond, not a select: a finite step runs only the update, a non-finite one keeps the state
        params, opt_state = jax.lax.cond(
            finite, update, lambda p, o, g: (p, o), state["params"], state["opt_state"], grads
        )
        new_state = {
            "params": params,
            "opt_state": opt_state,
            "step": state["step"] + finite.astype(jnp.int32),
            "rng": state["rng"],
        }
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": schedule(state["step"]),
            "finite": finite,
            "num_targets": jnp.sum(weights),
            "real_tokens": jnp.sum(inputs["length"]),
        }
        return new_state, metrics

    return jax.jit(step, in_shardings=(shardings, None), out_shardings=(shardings, None), donate_argnums=0)
