"""Frozen probes (attentive and linear) as a sweep: one head per (feature spec, learning rate), all trained
together on one frozen-backbone forward per batch.

Head parameters, BatchNorm statistics and optimizer states are stacked [F, L, ...] (F feature specs from
probe.blocks, L learning rates from probe.lrs) and every head starts from the same initialisation, so head
(f, l) of a sweep trains exactly as a single-head run with those features and that learning rate would.
The optimizer runs per head (vmapped: each head clips by its own gradient norm) with a unit peak learning
rate; each head's updates are then scaled by its learning rate.

State: {'params': stacked head params, 'batch_stats', 'opt_state', 'step', 'rng'}. The backbone's parameters
are a separate, read-only argument: never optimised, and no gradient reaches them (stop_gradient).
"""

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from naraim.model.model import MODEL_INPUTS
from naraim.model.vit import ViT
from naraim.probe import features as F
from naraim.probe.accuracy import topk_correct


@dataclasses.dataclass(frozen=True)
class Sweep:
    """backbone (frozen) -> block stack -> F feature specs -> F x L heads -> logits [F, L, B, C].

    pooled: the stack is mean-pooled over the real tokens ([B, nb, D], for heads on pooled features such as
    the linear probe) instead of the tokens themselves ([B, nb, N, D], for the attentive head)."""

    backbone: ViT
    head: nn.Module
    attention: str
    specs: tuple[int | str, ...]
    lrs: tuple[float, ...]
    last_k: int
    pooled: bool = False

    @property
    def blocks(self) -> tuple[int, ...]:
        return F.needed_blocks(self.specs, self.backbone.depth, self.last_k)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.specs), len(self.lrs)

    def block_stack(self, backbone_params: dict, batch: dict) -> jax.Array:
        """float32 [B, nb, N, D] (pooled: [B, nb, D]) of the blocks the specs read (what the feature cache
        stores)."""
        _, inter = self.backbone.apply(
            {"params": backbone_params}, *(batch[k] for k in MODEL_INPUTS), attention=self.attention
        )
        stack = F.block_stack(inter, self.blocks)
        return jax.lax.stop_gradient(F.mean_pool(stack, batch["length"]) if self.pooled else stack)

    def features(self, stack: jax.Array) -> jax.Array:
        """[F, B, N, D] from a block stack [B, nb, N, D] (pooled: [F, B, D] from [B, nb, D])."""
        return F.spec_features(stack, self.specs, self.blocks, self.backbone.depth, self.last_k)

    def logits(self, head_vars: dict, feats: jax.Array, length: jax.Array, train: bool):
        """(logits float32 [F, L, B, C], updated batch_stats (as head_vars', {} without BatchNorm))."""
        has_stats = "batch_stats" in head_vars

        def one(variables, x):
            if train and has_stats:
                out, updates = self.head.apply(variables, x, length, True, mutable=["batch_stats"])
                return out, updates["batch_stats"]
            return self.head.apply(variables, x, length, train), variables.get("batch_stats", {})

        per_lr = jax.vmap(one, in_axes=(0, None))  # over L, same features
        return jax.vmap(per_lr, in_axes=(0, 0))(head_vars, feats)  # over F

    def init(self, backbone_params: dict, sample: dict, seed: int) -> tuple[dict, dict]:
        """(stacked head params, stacked batch_stats): every head from PRNGKey(seed), as a single run's."""
        feats = self.features(self.block_stack(backbone_params, sample))[0]
        variables = self.head.init(jax.random.PRNGKey(seed), feats, sample["length"], False)

        def stacked(tree):
            return jax.tree.map(lambda x: jnp.broadcast_to(x, self.shape + x.shape), tree)

        return stacked(variables["params"]), stacked(variables.get("batch_stats", {}))


def init_state(params: dict, batch_stats: dict, optimizer: optax.GradientTransformation, seed: int) -> dict:
    """The train state around stacked head params; the optimizer state is per head."""
    return {
        "params": params,
        "batch_stats": batch_stats,
        "opt_state": jax.vmap(jax.vmap(optimizer.init))(params),
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.fold_in(jax.random.PRNGKey(seed), 1),
    }


def _head_vars(params: dict, batch_stats: dict) -> dict:
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def make_train_step(
    sweep: Sweep,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    cached: bool,
    label_smoothing: float = 0.0,
) -> Callable:
    """Returns jitted step(state, backbone_params, batch) -> (state, metrics), the state donated.

    optimizer / schedule: with a unit peak learning rate (each head's lr multiplies its updates). cached:
    batch = {'features' (the block stack), 'length', 'label'} from the feature cache; else the
    batch contract. label_smoothing: of the one-hot targets.
    metrics: 'loss' and 'accuracy' [F, L] per head, 'grad_norm' [F, L], 'lr' (of lrs[0]).
    """
    lrs = jnp.asarray(sweep.lrs, jnp.float32)

    def loss_fn(params, batch_stats, feats, length, label):
        logits, new_stats = sweep.logits(_head_vars(params, batch_stats), feats, length, train=True)
        classes = logits.shape[-1]
        targets = jax.nn.one_hot(label, classes) * (1 - label_smoothing) + label_smoothing / classes
        per_head = jnp.mean(optax.softmax_cross_entropy(logits, targets), axis=-1)  # [F, L]
        return jnp.sum(per_head), (per_head, logits, new_stats)

    def step(state, backbone_params, batch):
        stack = batch["features"] if cached else sweep.block_stack(backbone_params, batch)
        feats = sweep.features(stack)
        grad_fn = jax.grad(loss_fn, has_aux=True)
        grads, (loss, logits, new_stats) = grad_fn(
            state["params"], state["batch_stats"], feats, batch["length"], batch["label"]
        )
        updates, opt_state = jax.vmap(jax.vmap(optimizer.update))(grads, state["opt_state"], state["params"])
        updates = jax.tree.map(lambda u: u * lrs.reshape((1, -1) + (1,) * (u.ndim - 2)), updates)
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(topk_correct(logits, batch["label"], 1), axis=-1),
            "grad_norm": jax.vmap(jax.vmap(optax.tree.norm))(grads),
            "lr": schedule(state["step"]) * lrs[0],
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


def make_eval_step(sweep: Sweep, cached: bool = False) -> Callable:
    """Returns jitted eval(state, backbone_params, batch) -> (top1 bool [B, F, L], top5 bool [B, F, L]).

    cached: batch = {'features', 'length', 'label'} (minival rows of the cache); else the batch contract."""

    def evaluate(state, backbone_params, batch):
        stack = batch["features"] if cached else sweep.block_stack(backbone_params, batch)
        head_vars = _head_vars(state["params"], state["batch_stats"])
        logits, _ = sweep.logits(head_vars, sweep.features(stack), batch["length"], train=False)
        top1, top5 = (jnp.moveaxis(topk_correct(logits, batch["label"], k), -1, 0) for k in (1, 5))
        return top1, top5

    return jax.jit(evaluate)
