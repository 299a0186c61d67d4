"""Fine-tuning: train state, the jitted train step and the eval step.

State: {'params': {'backbone', 'head'}, 'batch_stats': the head's BatchNorm statistics, 'opt_state', 'step',
'rng'}. Frozen protocols use naraim.probe.sweep.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from naraim.probe.accuracy import topk_correct
from naraim.probe.classifier import Classifier
from naraim.probe.mixup import mix_batch


def init_params(clf: Classifier, backbone_params: dict, sample: dict, seed: int) -> tuple[dict, dict]:
    """(params {'backbone', 'head'}, head batch_stats); `sample` is a batch of model inputs that shapes the
    head."""
    features = clf.features(backbone_params, sample)
    head_vars = clf.head.init(jax.random.PRNGKey(seed), features, sample["length"], False)
    return {"backbone": backbone_params, "head": head_vars["params"]}, head_vars.get("batch_stats", {})


def init_state(params: dict, batch_stats: dict, optimizer: optax.GradientTransformation, seed: int) -> dict:
    """The initial train state around the trainable params."""
    return {
        "params": params,
        "batch_stats": batch_stats,
        "opt_state": optimizer.init(params),
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.fold_in(jax.random.PRNGKey(seed), 1),
    }


def _targets(label: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
    one_hot = jax.nn.one_hot(label, num_classes)
    return one_hot * (1 - smoothing) + smoothing / num_classes


def make_train_step(
    clf: Classifier,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    cfg: ConfigDict,
    num_classes: int,
) -> Callable:
    """Returns jitted step(state, batch) -> (state, metrics) with the state donated.

    batch: the batch contract. Applies label smoothing and mixup/CutMix (cfg.finetune).
    """
    ft = cfg.finetune

    drop_path = bool(cfg.model.get("drop_path", 0.0))

    def loss_fn(params, batch_stats, batch, rng):
        targets = _targets(batch["label"], num_classes, float(ft.label_smoothing))
        batch, targets = mix_batch(rng, batch, targets, ft.mixup_alpha, ft.cutmix_alpha, ft.mix_prob)
        features = clf.features(params["backbone"], batch, jax.random.fold_in(rng, 1) if drop_path else None)
        head_vars = {"params": params["head"], **({"batch_stats": batch_stats} if batch_stats else {})}
        logits, new_stats = clf.logits(head_vars, features, batch["length"], train=True)
        loss = jnp.mean(optax.softmax_cross_entropy(logits, targets))
        return loss, (logits, new_stats)

    def step(state, batch):
        rng = jax.random.fold_in(state["rng"], state["step"])
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (logits, new_stats)), grads = grad_fn(state["params"], state["batch_stats"], batch, rng)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(topk_correct(logits, batch["label"], 1)),
            "grad_norm": optax.tree.norm(grads),
            "lr": schedule(state["step"]),
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


def make_eval_step(clf: Classifier) -> Callable:
    """Returns jitted eval(state, batch) -> (top1 bool [B], top5 bool [B])."""

    def evaluate(state, batch):
        features = clf.features(state["params"]["backbone"], batch)
        head_vars = {"params": state["params"]["head"]}
        if state["batch_stats"]:
            head_vars["batch_stats"] = state["batch_stats"]
        logits, _ = clf.logits(head_vars, features, batch["length"], train=False)
        return topk_correct(logits, batch["label"], 1), topk_correct(logits, batch["label"], 5)

    return jax.jit(evaluate)
