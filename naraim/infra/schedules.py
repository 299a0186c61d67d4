"""Learning-rate schedules: NARAIM's warmup + exponential decay + linear cooldown (ours and the reference
code's formula), and warmup + cosine."""

import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

SCHEDULES = ("naraim", "naraim_ref", "cosine", "constant")


def naraim_schedule(
    peak_lr: float, total_steps: int, warmup_steps: int, decay_rate: float, cooldown_steps: int
) -> optax.Schedule:
    """Linear warmup 0 -> peak_lr, then peak_lr * decay_rate**(t / decay span) until the end of the run,
    multiplied during the last `cooldown_steps` by a linear ramp down to 0 at `total_steps`.

    The decay span is total_steps - warmup_steps, so the lr reaches peak_lr * decay_rate at the end (before
    the cooldown factor).
    """
    decay_span = max(total_steps - warmup_steps, 1)
    cooldown_start = total_steps - cooldown_steps

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        warm = t / max(warmup_steps, 1)
        decay = decay_rate ** (jnp.clip(t - warmup_steps, 0.0, None) / decay_span)
        lr = peak_lr * jnp.where(t < warmup_steps, warm, decay)
        cool = jnp.clip((total_steps - t) / max(cooldown_steps, 1), 0.0, 1.0)
        return jnp.where(t >= cooldown_start, lr * cool, lr)

    return schedule


def naraim_ref_schedule(
    peak_lr: float,
    total_steps: int,
    warmup_steps: int,
    decay_rate: float,
    cooldown_steps: int,
    min_lr: float = 0.0,
) -> optax.Schedule:
    """The NARAIM reference code's schedule (exponential_scheduler.py), with decay span
    ds = total_steps - warmup_steps - cooldown_steps:

      t < warmup:             peak_lr * t / warmup
      warmup <= t < w + ds:   peak_lr * decay_rate ** ((t - warmup) / ds)
      t >= warmup + ds:       max(min_lr, peak_lr * decay_rate * (1 - (t - warmup - ds) / cooldown))

    so the exponential ends at peak_lr * decay_rate where the cooldown starts, and the cooldown is a linear
    ramp from there to 0 at total_steps.
    """
    decay_span = max(total_steps - warmup_steps - cooldown_steps, 1)
    cooldown_start = warmup_steps + decay_span

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        # optax.linear_schedule's arithmetic, as the reference uses it
        warm = -peak_lr * (1.0 - jnp.clip(t, 0.0, warmup_steps) / max(warmup_steps, 1)) + peak_lr
        decay = peak_lr * decay_rate ** ((t - warmup_steps) / decay_span)
        cool = peak_lr * decay_rate * (1.0 - (t - cooldown_start) / max(cooldown_steps, 1))
        cool = jnp.maximum(min_lr, cool)
        return jnp.where(t < warmup_steps, warm, jnp.where(t < cooldown_start, decay, cool))

    return schedule


def cosine_schedule(
    peak_lr: float, total_steps: int, warmup_steps: int, end_lr: float = 0.0
) -> optax.Schedule:
    """Linear warmup 0 -> peak_lr over `warmup_steps`, then cosine decay to `end_lr` at `total_steps`."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak_lr,
        warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1),
        end_value=end_lr,
    )


def make_schedule(optim: ConfigDict, total_steps: int) -> optax.Schedule:
    """The schedule named by optim.schedule ('naraim' | 'naraim_ref' | 'cosine' | 'constant')."""
    if optim.schedule == "naraim":
        return naraim_schedule(
            optim.lr, total_steps, optim.warmup_steps, optim.decay_rate, optim.cooldown_steps
        )
    if optim.schedule == "naraim_ref":
        return naraim_ref_schedule(
            optim.lr, total_steps, optim.warmup_steps, optim.decay_rate, optim.cooldown_steps, optim.end_lr
        )
    if optim.schedule == "cosine":
        return cosine_schedule(optim.lr, total_steps, optim.warmup_steps, optim.end_lr)
    if optim.schedule == "constant":
        return optax.constant_schedule(optim.lr)
    raise ValueError(f"unknown schedule {optim.schedule!r}")
