"""Compute dtype, rematerialisation and scan over layers change how the model runs, not what it computes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from naraim.model.model import make_model


def batch() -> dict:
    rng = np.random.default_rng(0)
    coords = np.stack(np.divmod(np.arange(8), 4), axis=-1)
    return dict(
        patches=rng.integers(0, 256, (2, 8, 12), dtype=np.uint8),
        coords=np.tile(coords[None].astype(np.int32), (2, 1, 1)),
        grid=np.array([[2, 4], [2, 4]], np.int32),
        length=np.array([8, 5], np.int32),
    )


CFG = dict(variant="Pico/2", posemb="rope_2d", attention="prefix_causal", head="mlp", head_depth=1)
PREFIX = jnp.array([3, 2])


def loss_and_grads(model, params):
    def loss(p):
        out = model.apply(p, batch(), prefix_length=PREFIX)
        return jnp.mean(out["pred"] ** 2), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return out, grads


@pytest.fixture(scope="module")
def reference():
    model = make_model(CFG)
    params = jax.jit(model.init)(jax.random.key(0), batch(), prefix_length=PREFIX)
    return params, *loss_and_grads(model, params)


def test_bfloat16_compute_is_close_to_float32(reference):
    params, ref, _ = reference
    model = make_model(dict(CFG, dtype="bfloat16"))
    out = jax.jit(model.apply)(params, batch(), prefix_length=PREFIX)
    assert out["pred"].dtype == jnp.float32 and out["encoded"].dtype == jnp.bfloat16
    shapes = jax.eval_shape(model.init, jax.random.key(0), batch())
    assert {x.dtype for x in jax.tree.leaves(shapes)} == {jnp.dtype("float32")}
    err = np.abs(np.asarray(out["pred"]) - np.asarray(ref["pred"])).max()
    scale = np.abs(np.asarray(ref["pred"])).max()
    assert err < 0.05 * scale, (err, scale)
    assert np.isfinite(np.asarray(out["encoded"], np.float32)).all()


def to_scanned(params: dict, depth: int) -> dict:
    """Stacks block_0..block_{depth-1} into the 'blocks' subtree used with model.scan."""
    backbone = dict(params["params"]["backbone"])
    blocks = [backbone.pop(f"block_{i}") for i in range(depth)]
    backbone["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
    return {"params": dict(params["params"], backbone=backbone)}


@pytest.mark.parametrize("remat,scan", [("nothing_saveable", False), ("dots_saveable", True)])
def test_remat_and_scan_match_plain_model(reference, remat, scan):
    params, ref, ref_grads = reference
    model = make_model(dict(CFG, remat=remat, scan=scan))
    if scan:
        params, ref_grads = to_scanned(params, 2), to_scanned(ref_grads, 2)
        shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), batch(), prefix_length=PREFIX))
        assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, params)
    out, grads = loss_and_grads(model, params)
    for key in ("pred", "embed", "block_0", "block_1", "encoded"):
        np.testing.assert_allclose(out[key], ref[key], atol=1e-5, rtol=1e-5)
    for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(g, g_ref, atol=1e-5, rtol=1e-4)
