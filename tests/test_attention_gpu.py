"""model.attention_impl='cudnn' computes what the default einsum core computes (GPU only; skipped on CPU).

Run on a GPU machine: python -m pytest tests/test_attention_gpu.py
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from naraim.model.attention import ATTENTION_MODES, attention_mask, dot_product_attention
from naraim.model.model import make_model

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")

LENGTH = np.array([256, 173, 40, 1], np.int32)
PREFIX = np.array([100, 0, 39, 1], np.int32)


def rel_err(x: jax.Array, ref: jax.Array) -> float:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


@pytest.mark.parametrize("mode", ATTENTION_MODES)
def test_cudnn_kernel_matches_einsum_core(mode):
    b, h, n, d = 4, 6, 256, 64
    q, k, v = jax.random.normal(jax.random.key(1), (3, b, h, n, d), jnp.bfloat16)
    mask = attention_mask(jnp.asarray(LENGTH), n, mode, jnp.asarray(PREFIX))
    ref = dot_product_attention(q, k, v, mask)
    out = jax.nn.dot_product_attention(
        q.swapaxes(1, 2), k.swapaxes(1, 2), v.swapaxes(1, 2), mask=mask, implementation="cudnn"
    ).swapaxes(1, 2)
    real = np.arange(n)[None, :] < LENGTH[:, None]
    assert rel_err(out.swapaxes(1, 2)[real], ref.swapaxes(1, 2)[real]) < 1e-2


def test_cudnn_model_matches_xla_model_forward_and_gradients():
    cfg = dict(variant="Ti/14", posemb="rope_2d", attention="prefix_causal", dtype="bfloat16")
    rng = np.random.default_rng(0)
    n, cols = 256, 16
    coords = np.stack(np.divmod(np.arange(n), cols), -1).astype(np.int32)
    batch = dict(
        patches=rng.integers(0, 256, (4, n, 14 * 14 * 3), dtype=np.uint8),
        coords=np.broadcast_to(coords, (4, n, 2)).copy(),
        grid=np.tile(np.array([n // cols, cols], np.int32), (4, 1)),
        length=LENGTH,
    )
    xla, cudnn = make_model(cfg), make_model(dict(cfg, attention_impl="cudnn"))
    params = jax.jit(xla.init)(jax.random.key(0), batch, prefix_length=PREFIX)

    def run(model):
        def loss(p):
            pred = model.apply(p, batch, prefix_length=PREFIX)["pred"]
            real = (jnp.arange(n)[None, :] < batch["length"][:, None])[..., None]
            return jnp.sum(jnp.where(real, pred, 0.0) ** 2), pred

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    (_, pred_ref), grads_ref = run(xla)
    (_, pred), grads = run(cudnn)
    real = np.arange(n)[None, :] < LENGTH[:, None]
    assert rel_err(pred[real], pred_ref[real]) < 2e-2
    for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
        assert rel_err(g, g_ref) < 5e-2
