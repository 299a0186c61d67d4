"""AdamW with gradient clipping; weight decay on weight matrices only (not norms, biases or embeddings) or on
every parameter (the NARAIM reference)."""

import re

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from naraim.errors import UserError
from naraim.infra.options import Option
from naraim.infra.schedules import SCHEDULES, make_schedule

OPTIMIZERS = ("adamw", "lars")
DECAY_MASKS = ("kernels", "all")
OPTIM_OPTIONS = {
    "optimizer": Option("adamw", "'adamw' | 'lars' (b1 is its momentum)"),
    "schedule": Option(
        "naraim",
        "'naraim': warmup, exponential decay to lr * decay_rate at the end, times a linear ramp over the "
        "cooldown; 'naraim_ref': the reference code's formula (naraim/infra/schedules.py); 'cosine'; "
        "'constant'",
    ),
    "lr": Option(1e-3, "peak learning rate"),
    "warmup_steps": Option(5_000, "linear warmup from 0"),
    "decay_rate": Option(0.1, "naraim, naraim_ref: the exponential decays to lr * decay_rate"),
    "cooldown_steps": Option(10_000, "naraim, naraim_ref: linear ramp down over the last steps"),
    "end_lr": Option(0.0, "cosine: final lr; naraim_ref: floor of the cooldown"),
    "b1": Option(0.9, "AdamW beta1 (LARS: momentum)"),
    "b2": Option(0.98, "AdamW beta2"),
    "eps": Option(1e-8, "AdamW epsilon"),
    "weight_decay": Option(0.01, "decoupled weight decay (times the learning rate)"),
    "decay": Option(
        "kernels", "weight decay on 'kernels' (Dense kernels outside position embeddings) | 'all'"
    ),
    "clip_norm": Option(1.0, "0: no clipping"),
}

# Path components naming position-embedding tables/layers, the SOS token and the probe's learned query.
_NO_DECAY_PATTERN = re.compile(r"pos|sos|query", re.IGNORECASE)


def _key_name(key) -> str:
    return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))


def decays(path: tuple, leaf) -> bool:
    """True for weights that get weight decay: Dense/DenseGeneral kernels outside position embeddings.

    Norm scales and biases are not kernels; the position-embedding layers and tables, the SOS token and
    the probe query are recognised by name (any path component matching 'pos', 'sos' or 'query'). Works
    for params stacked
    by nn.scan, where biases and scales are not vectors.
    """
    names = [_key_name(k) for k in path]
    return names[-1] == "kernel" and not any(_NO_DECAY_PATTERN.search(n) for n in names)


def decay_mask(params):
    """A pytree of bools like `params`: True where weight decay applies."""
    return jax.tree_util.tree_map_with_path(decays, params)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
    """Scales the gradients by min(1, max_norm / global_norm): optax.clip_by_global_norm's function.

    update(grads, state, params, grad_norm=None) takes the norm the caller already computed (the train step
    does, for its NaN guard and logs), saving a pass over the gradients. The scale is one scalar multiply,
    which XLA fuses into AdamW's moment updates; optax's per-element divide was materialised as a copy of
    the gradients.
    """

    def update(grads, state, params=None, grad_norm=None):
        del params
        norm = optax.tree.norm(grads) if grad_norm is None else grad_norm
        scale = jnp.where(norm < max_norm, 1.0, max_norm / norm)
        return jax.tree_util.tree_map(lambda g: g * scale.astype(g.dtype), grads), state

    return optax.GradientTransformationExtraArgs(optax.init_empty_state, update)


def make_optimizer(
    optim: ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Global-norm clipping (optim.clip_norm, 0 = off) then optim.optimizer: AdamW(lr schedule, b1, b2, eps,
    weight_decay) or LARS(lr schedule, weight_decay, momentum b1), with weight decay on the parameters
    optim.decay names ('kernels': decay_mask; 'all').

    Returns (optimizer, schedule); the schedule maps the optimizer step to the learning rate for logging.
    optimizer.update accepts grad_norm=, the gradients' global norm if the caller has it.
    """
    schedule = make_schedule(optim, total_steps)
    parts = []
    if optim.clip_norm > 0:
        parts.append(clip_by_global_norm(optim.clip_norm))
    mask = decay_mask if optim.decay == "kernels" else None
    if optim.optimizer == "lars":
        parts.append(
            optax.lars(
                schedule, weight_decay=optim.weight_decay, weight_decay_mask=mask or True, momentum=optim.b1
            )
        )
    else:
        parts.append(
            optax.adamw(
                schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay, mask=mask
            )
        )
    return optax.chain(*parts), schedule


def validate_optim_config(optim: ConfigDict, total_steps: int) -> None:
    """Raises UserError naming the first bad `optim.*` value of a pre-training run of `total_steps`."""
    if optim.schedule not in SCHEDULES:
        raise UserError(f"optim.schedule={optim.schedule!r}; use one of {', '.join(SCHEDULES)}")
    if optim.lr <= 0 or optim.warmup_steps < 0 or optim.cooldown_steps < 0:
        raise UserError(
            f"optim.lr must be > 0 (got {optim.lr}) and optim.warmup_steps, optim.cooldown_steps >= 0 "
            f"(got {optim.warmup_steps}, {optim.cooldown_steps})"
        )
    cooldown = optim.cooldown_steps if optim.schedule in ("naraim", "naraim_ref") else 0
    if total_steps and optim.schedule != "constant" and optim.warmup_steps + cooldown > total_steps:
        raise UserError(
            f"optim.warmup_steps + optim.cooldown_steps = {optim.warmup_steps + cooldown} "
            f"exceed total_steps={total_steps}; shorten them or train longer"
        )
    if optim.optimizer not in OPTIMIZERS:
        raise UserError(f"optim.optimizer={optim.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    if optim.decay not in DECAY_MASKS:
        raise UserError(f"optim.decay={optim.decay!r}; use one of {', '.join(DECAY_MASKS)}")
