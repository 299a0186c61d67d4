"""The probe's one train state, train step and eval step, for a sweep of frozen-backbone heads and for
fine-tuning alike (naraim.probe.classifiers: `model` is a Sweep or a Classifier).

State: {'params', 'batch_stats' (the heads' BatchNorm statistics), 'opt_state', 'step', 'rng'}. A sweep's
params, statistics and optimizer states are stacked over its heads [F, L, ...]: the optimizer runs per head
(vmapped: each head clips by its own gradient norm) with a unit peak learning rate, and each head's updates
are then scaled by its learning rate (`lrs`). Fine-tuning's params are {'backbone', 'head'}, its optimizer
carries the learning rate.

The loop (train_loop) shared by frozen probes and fine-tuning: steps, logging, periodic evaluation,
checkpoints of (state, data position) and exact resume.
"""

import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from naraim.console import progress
from naraim.infra.checkpoint import Checkpointer, abstract_like
from naraim.infra.metrics_log import MetricsLogger
from naraim.infra.optimizer import decay_mask
from naraim.probe.classifiers import Classifier, Sweep
from naraim.probe.results import topk_correct
from naraim.stop_signals import raise_if_stopped


def _per_head(fn: Callable, heads: tuple[int, ...]) -> Callable:
    """fn vmapped over the `heads` leading axes (fn itself for a single head)."""
    for _ in heads:
        fn = jax.vmap(fn)
    return fn


def smoothed_targets(label: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
    """float32 [B, C]: one-hot targets with `smoothing` of the mass spread over the classes."""
    return jax.nn.one_hot(label, num_classes) * (1 - smoothing) + smoothing / num_classes


def init_state(params: dict, batch_stats: dict, optimizer: optax.GradientTransformation, seed: int, heads=()):
    """The train state around the trainable params (stacked over `heads` leading axes: one optimizer state
    per head)."""
    return {
        "params": params,
        "batch_stats": batch_stats,
        "opt_state": _per_head(optimizer.init, heads)(params),
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.fold_in(jax.random.PRNGKey(seed), 1),
    }


def make_train_step(
    model: Sweep | Classifier,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    num_classes: int,
    *,
    label_smoothing: float = 0.0,
    lrs: tuple[float, ...] | None = None,
    weight_decays: tuple[float, ...] | None = None,
    decay_all: bool = False,
    mix: Callable | None = None,
    cached: bool = False,
) -> Callable:
    """Returns jitted step(state, frozen_params, batch) -> (state, metrics), the state donated.

    frozen_params: the sweep's backbone parameters (None for fine-tuning). lrs: each head's learning rate,
    multiplying its updates (the optimizer then has a unit peak rate); None: the optimizer's own.
    weight_decays: each head's decoupled weight decay (one per lr; the optimizer then has none), added as
    AdamW adds it (schedule(step) * wd * param, on the kernels decay_mask names, or on all with decay_all)
    before the learning rate scales the update. mix(rng,
    batch, targets) -> (batch, targets): mixup/CutMix of fine-tuning. cached: batch = {'features' (the
    block stack), 'length', 'label'} from the feature cache; else the batch contract.
    metrics: 'loss', 'accuracy' and 'grad_norm' per head (scalars for one), 'lr' (of lrs[0]).
    """
    heads = model.heads
    scale = None if lrs is None else jnp.asarray(lrs, jnp.float32)
    decay = None if weight_decays is None else jnp.asarray(weight_decays, jnp.float32)

    def per_value(x: jax.Array, ndim: int) -> jax.Array:
        """[L] -> broadcastable against stacked [F, L, ...] leaves of `ndim` dimensions."""
        return x.reshape((1, -1) + (1,) * (ndim - 2))

    def loss_fn(params, batch_stats, x, length, label, rng):
        targets = smoothed_targets(label, num_classes, label_smoothing)
        if mix is not None:
            x, targets = mix(rng, x, targets)
        logits, new_stats = model.apply(params, batch_stats, x, length, rng, train=True)
        per_head = jnp.mean(optax.softmax_cross_entropy(logits, targets), axis=-1)  # heads
        return jnp.sum(per_head), (per_head, logits, new_stats)

    def step(state, frozen_params, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])
        x = model.inputs(frozen_params, batch, cached)
        grad_fn = jax.grad(loss_fn, has_aux=True)
        grads, (loss, logits, new_stats) = grad_fn(
            state["params"], state["batch_stats"], x, batch["length"], batch["label"], rng
        )
        updates, opt_state = _per_head(optimizer.update, heads)(grads, state["opt_state"], state["params"])
        lr = schedule(state["step"])
        if decay is not None:
            mask = jax.tree.map(lambda _: True, state["params"]) if decay_all else decay_mask(state["params"])
            updates = jax.tree.map(
                lambda u, p, m: u - lr * per_value(decay, p.ndim) * p * m if m else u,
                updates,
                state["params"],
                mask,
            )
        if scale is not None:
            updates = jax.tree.map(lambda u: u * per_value(scale, u.ndim), updates)
            lr = lr * scale[0]
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(topk_correct(logits, batch["label"], 1), axis=-1),
            "grad_norm": _per_head(optax.tree.norm, heads)(grads),
            "lr": lr,
        }
        new_state = {
            "params": optax.apply_updates(state["params"], updates),
            "batch_stats": new_stats,
            "opt_state": opt_state,
            "step": state["step"] + 1,
            "rng": state["rng"],
        }
        return new_state, metrics

    return jax.jit(step, donate_argnums=(0,))


def make_eval_step(model: Sweep | Classifier, cached: bool = False) -> Callable:
    """Returns jitted eval(state, frozen_params, batch) -> (top1 bool [B, *heads], top5 bool [B, *heads]).

    cached: batch = {'features', 'length', 'label'} (minival rows of the cache); else the batch contract."""

    def evaluate(state, frozen_params, batch):
        x = model.inputs(frozen_params, batch, cached)
        logits, _ = model.apply(state["params"], state["batch_stats"], x, batch["length"], None, train=False)
        top1, top5 = (jnp.moveaxis(topk_correct(logits, batch["label"], k), -1, 0) for k in (1, 5))
        return top1, top5

    return jax.jit(evaluate)


def _mean(window: list[dict], key: str) -> float:
    return float(np.mean([np.mean(m[key]) for m in window]))


def train_loop(
    cfg: ConfigDict,
    workdir: str,
    step_fn: Callable[[dict, dict], tuple[dict, dict]],
    state: dict,
    batches: Iterator,
    logger: MetricsLogger,
    evaluate: Callable[[dict, int], None] | None = None,
) -> dict:
    """Runs step_fn(state, local_batch) -> (state, metrics) from the newest checkpoint in WORKDIR/checkpoints
    (if any) to cfg.total_steps; returns the final state.

    metrics: 'loss', 'accuracy', 'grad_norm' (scalars, or one per head: logged as their mean), 'lr'.
    batches: get_state() / set_state() (grain iterators, CacheBatches) are saved with the state every
    cfg.checkpoint_every steps (0: never) and at the end. evaluate(state, step) runs every cfg.eval_every
    steps (0: never) before the last.
    """
    checkpointer = Checkpointer(workdir, cfg.keep_checkpoints, keep_every=0) if cfg.checkpoint_every else None
    step = 0
    if checkpointer is not None and (saved := checkpointer.latest_step()):
        state, data_state = checkpointer.restore(saved, abstract_like(state))
        batches.set_state(data_state)
        step = saved
    bar = progress(cfg.total_steps, cfg.protocol, "step", initial=step, enabled=cfg.progress_bar)
    window, window_start = [], time.time()
    try:
        while step < cfg.total_steps:
            raise_if_stopped()  # a Ctrl-C whose KeyboardInterrupt Python dropped
            state, metrics = step_fn(state, next(batches))
            step += 1
            window.append(metrics)
            last = step == cfg.total_steps
            if step % cfg.log_every == 0 or last:
                window = jax.device_get(window)
                ips = len(window) * cfg.batch_size / max(time.time() - window_start, 1e-9)
                record = {k: _mean(window, k) for k in ("loss", "accuracy", "grad_norm")}
                record.update(lr=float(window[-1]["lr"]), images_per_sec=ips)
                logger.write(step, "train", record)
                bar.update(step, f"loss {record['loss']:.4f} lr {record['lr']:.2e} {ips:.0f} img/s")
                window, window_start = [], time.time()
            if checkpointer is not None and (step % cfg.checkpoint_every == 0 or last):
                checkpointer.save(step, state, batches.get_state())
            if evaluate is not None and cfg.eval_every and step % cfg.eval_every == 0 and not last:
                evaluate(state, step)
                window_start = time.time()
    finally:
        bar.close()
        if checkpointer is not None:
            checkpointer.wait()
            checkpointer.close()
    return state
