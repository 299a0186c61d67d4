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


def test_cudnn_never_attends_across_the_images_of_a_packed_row():
    """Three images of 100, 60 and 50 tokens in rows of 256: perturbing the second (and the padding) leaves
    the others' predictions bitwise unchanged under the cuDNN core (maxtext#4476: a cuDNN path that ignored
    segment ids leaked across examples)."""
    cfg = dict(variant="Ti/14", posemb="fractional", attention="prefix_causal", dtype="bfloat16")
    model = make_model(dict(cfg, attention_impl="cudnn"))
    rng = np.random.default_rng(0)
    n, lengths, grids = 256, [100, 60, 50], [(10, 10), (6, 10), (5, 10)]
    segment_ids, positions, coords = (
        np.zeros((2, n), np.int32),
        np.zeros((2, n), np.int32),
        np.zeros((2, n, 2)),
    )
    start = 0
    for s, (length, (_, cols)) in enumerate(zip(lengths, grids, strict=True)):
        span = slice(start, start + length)
        segment_ids[:, span], positions[:, span] = s + 1, np.arange(length)
        coords[:, span] = np.stack(np.divmod(np.arange(length), cols), -1)
        start += length
    batch = dict(
        patches=rng.integers(0, 256, (2, n, 14 * 14 * 3), dtype=np.uint8),
        coords=coords.astype(np.int32),
        grid=np.tile(np.array(grids, np.int32), (2, 1, 1)),
        length=np.tile(np.array(lengths, np.int32), (2, 1)),
        segment_ids=segment_ids,
        positions=positions,
    )
    prefix = np.tile(np.array([30, 1, 49], np.int32), (2, 1))
    params = jax.jit(model.init)(jax.random.key(0), batch, prefix_length=prefix)
    apply = jax.jit(lambda b: model.apply(params, b, prefix_length=prefix)["pred"])
    poked = dict(batch, patches=batch["patches"].copy())
    poked["patches"][(segment_ids == 2) | (segment_ids == 0)] = 7
    before, after = np.asarray(apply(batch)), np.asarray(apply(poked))
    others = (segment_ids == 1) | (segment_ids == 3)
    assert before[others].tobytes() == after[others].tobytes()
    assert not np.array_equal(before[segment_ids == 2], after[segment_ids == 2])
