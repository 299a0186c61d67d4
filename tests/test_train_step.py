import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from probe_helpers import load_config

from naraim.data.pipeline import make_train_iterator
from naraim.infra.mesh import global_batch, make_mesh
from naraim.infra.optimizer import clip_by_global_norm, decay_mask, make_optimizer
from naraim.model.model import make_model
from naraim.train.step import init_state, make_train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**model):
    cfg = load_config("demo", "naraim")
    cfg.batch_size, cfg.data.image_size, cfg.data.max_tokens, cfg.total_steps = 4, 32, 16, 10
    cfg.optim.warmup_steps, cfg.optim.cooldown_steps = 1, 1
    cfg.model.update(model)
    return cfg


def test_weight_decay_only_on_kernels_outside_embeddings():
    cfg = tiny_config(posemb="fractional", sos_token=True)
    params = make_model(cfg.model).init(jax.random.PRNGKey(0), _batch(cfg))["params"]
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(decay_mask(params))}
    assert flat and all(v == ("kernel" in k and "posemb" not in k) for k, v in flat.items()), flat
    assert any("posemb" in k and "kernel" in k for k in flat)  # the fractional embedding's Dense is excluded
    assert any("sos" in k for k in flat) and any(v for v in flat.values())


def test_clip_by_global_norm_matches_optax_and_uses_the_given_norm():
    grads = {"a": jnp.arange(6.0).reshape(2, 3), "b": jnp.array([-4.0, 0.5])}
    for max_norm in (0.5, 100.0):  # clipped, and left alone
        ours, _ = clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
        ref, _ = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
        jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), ours, ref)
    given, _ = clip_by_global_norm(1.0).update(grads, optax.EmptyState(), grad_norm=jnp.float32(10.0))
    np.testing.assert_allclose(given["b"], grads["b"] / 10.0, rtol=1e-6)
    chained = make_optimizer(tiny_config().optim, 10)[0]  # the chain hands grad_norm to the clip
    params = jax.tree_util.tree_map(jnp.zeros_like, grads)
    _, given_state = chained.update(grads, chained.init(params), params, grad_norm=jnp.float32(1e6))
    _, own_state = chained.update(grads, chained.init(params), params)
    given_mu, own_mu = (optax.tree.get(s, "mu")["b"] for s in (given_state, own_state))
    norm = np.sqrt(np.sum(np.arange(6.0) ** 2) + 4.0**2 + 0.5**2)  # > clip_norm: clipped by its own norm
    np.testing.assert_allclose(given_mu * 1e6, own_mu * norm, rtol=1e-5)


def _batch(cfg):
    it = make_train_iterator(cfg.data, patch_size=8, global_batch_size=cfg.batch_size, seed=0)
    return {k: jnp.asarray(v) for k, v in next(it).items() if k in ("patches", "coords", "grid", "length")}


def test_step_compiles_once_learns_and_skips_non_finite_updates():
    cfg = tiny_config()
    mesh = make_mesh()
    model = make_model(cfg.model)
    optimizer, schedule = make_optimizer(cfg.optim, cfg.total_steps)
    state, shardings = init_state(model, optimizer, cfg, mesh)
    step = make_train_step(model, optimizer, schedule, cfg, mesh, shardings)
    it = make_train_iterator(cfg.data, patch_size=8, global_batch_size=cfg.batch_size, seed=0)
    batch = global_batch(next(it), mesh)
    losses = []
    for _ in range(4):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        assert bool(metrics["finite"])
    assert step._cache_size() == 1
    assert int(state["step"]) == 4 and losses[-1] < losses[0]
    # poison one parameter: the step reports non-finite and leaves the state as it was
    leaves, treedef = jax.tree_util.tree_flatten(state["params"])
    leaves[0] = jnp.full_like(leaves[0], jnp.nan)
    state["params"] = jax.device_put(jax.tree_util.tree_unflatten(treedef, leaves), shardings["params"])
    before = jax.tree_util.tree_map(np.asarray, state)
    state, metrics = step(state, batch)
    assert not bool(metrics["finite"])
    after = jax.tree_util.tree_map(np.asarray, state)
    for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)
