"""Train state and the single jitted pre-training step (gradient accumulation, prefix draw, NaN guard)."""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from naraim.infra.mesh import DATA_AXIS, state_shardings
from naraim.model import segments
from naraim.model.model import dummy_batch, model_inputs
from naraim.objectives.mse import loss_weights, packed_loss_weights, target_shares
from naraim.objectives.objective import first_target, make_objective


def draw_prefix(rng, length, attention: str, sos_token: bool):
    """Per-image prefix length (int32 of length's shape: [B], or [B,M] for packed rows; or None) and first
    target index in the loss (int32, the same shape).

    prefix_causal: k uniform in {1, ..., length-1} (k = 1 when length == 1); targets j < k are not in the
    loss.
    causal: no prefix; the first target is first_target(sos_token).
    """
    if attention == "prefix_causal":
        u = jax.random.uniform(rng, length.shape)
        span = jnp.maximum(length - 1, 1)
        k = 1 + jnp.minimum(jnp.floor(u * span).astype(jnp.int32), span - 1)
        return k, k
    first = jnp.full(length.shape, first_target(sos_token), jnp.int32)
    return None, first


def init_state(model: nn.Module, optimizer: optax.GradientTransformation, cfg: ConfigDict, mesh: Mesh):
    """Creates {'params', 'opt_state', 'step', 'rng'} directly in its (replicated or FSDP) sharding.

    Returns (state, shardings).
    """

    def init():
        rng = jax.random.PRNGKey(cfg.seed)
        batch = dummy_batch(cfg, 1)
        head_inputs = make_objective(model, cfg.loss).init_head_inputs(1, *batch["patches"].shape[1:])
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
    objective = make_objective(model, cfg.loss)
    attention = cfg.model.attention
    sos = bool(cfg.model.get("sos_token", False))
    micro_sharding = NamedSharding(mesh, P(None, DATA_AXIS))

    def weighted_error(params, inputs, prefix, weights, noise_rng):
        return jnp.sum(objective.error(params, inputs, noise_rng, prefix_length=prefix) * weights)

    def step(state, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])
        inputs = model_inputs(batch)
        prefix, first = draw_prefix(rng, inputs["length"], attention, sos)
        num_tokens = inputs["patches"].shape[1]
        slots = num_tokens if sos else num_tokens - 1
        # each target's share of the mean: the loss and its gradients come out normalised, with no pass
        # over the gradients to divide them
        if segments.is_packed(inputs):
            weights = packed_loss_weights(inputs["segment_ids"], inputs["positions"], first)
            num_images = inputs["length"].shape[1]
            shares = target_shares(weights, cfg.loss.average, slots, inputs["segment_ids"], num_images)
        else:
            weights = loss_weights(inputs["length"], first, num_tokens)
            shares = target_shares(weights, cfg.loss.average, slots)
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
            "images": jnp.sum(inputs["length"] > 0),
        }
        return new_state, metrics

    return jax.jit(step, in_shardings=(shardings, None), out_shardings=(shardings, None), donate_argnums=0)
