"""Attention masks and what each attention mode lets a position see, probed by perturbing one patch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from naraim.model.attention import attention_mask, dot_product_attention
from naraim.model.posemb import POSEMBS
from naraim.model.vit import make_backbone

P = 2
DIM = P * P * 3


def image_batch(rows: int, cols: int, budget: int, batch: int = 2, pad_value: int = 0, seed: int = 0) -> dict:
    """Random images of rows x cols patches, raster order, padded to `budget` tokens with pad_value."""
    rng = np.random.default_rng(seed)
    n = rows * cols
    patches = np.full((batch, budget, DIM), pad_value, np.uint8)
    patches[:, :n] = rng.integers(0, 256, (batch, n, DIM), dtype=np.uint8)
    coords = np.zeros((batch, budget, 2), np.int32)
    coords[:, :n] = np.stack(np.divmod(np.arange(n), cols), axis=-1)
    return dict(
        patches=patches,
        coords=coords,
        grid=np.tile(np.array([rows, cols], np.int32), (batch, 1)),
        length=np.full((batch,), n, np.int32),
    )


def encode(posemb: str = "absolute_sincos_2d"):
    vit = make_backbone(dict(variant=f"Pico/{P}", posemb=posemb))
    b = image_batch(3, 4, 16)
    params = jax.jit(vit.init, static_argnames="attention")(
        jax.random.key(0), b["patches"], b["coords"], b["grid"], b["length"], attention="causal"
    )

    @jax.jit(static_argnames="attention")
    def apply(b, attention, prefix_length):
        out, _ = vit.apply(
            params,
            b["patches"],
            b["coords"],
            b["grid"],
            b["length"],
            attention=attention,
            prefix_length=prefix_length,
        )
        return out

    def run(b, kwargs):
        return apply(b, kwargs["attention"], kwargs.get("prefix_length"))

    return run


def test_mask_matches_definitions():
    length = jnp.array([5, 3])
    prefix = jnp.array([2, 1])
    n = 6
    q, k = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    for mode in ("causal", "prefix_causal", "bidirectional"):
        mask = np.asarray(attention_mask(length, n, mode, prefix))
        assert mask.shape == (2, 1, n, n)
        for b in range(2):
            L, p = int(length[b]), int(prefix[b])
            visible = {
                "causal": k <= q,
                "prefix_causal": (k <= q) | ((q < p) & (k < p)),
                "bidirectional": np.ones((n, n), bool),
            }[mode]
            np.testing.assert_array_equal(mask[b, 0], (visible & (k < L)) | (q == k))


def changed_positions(run, b, j, kwargs) -> np.ndarray:
    """Real positions whose output changes when patch j is changed."""
    base = run(b, kwargs)
    b2 = dict(b, patches=b["patches"].copy())
    b2["patches"][:, j] = 255 - b2["patches"][:, j]
    diff = np.abs(np.asarray(run(b2, kwargs) - base)).max(axis=(0, 2))
    return np.flatnonzero(diff[: int(b["length"][0])] > 1e-6)


@pytest.fixture(scope="module")
def run():
    return encode()


def test_causal_sees_only_the_past(run):
    b = image_batch(3, 4, 16)
    for j in (0, 5, 11):
        np.testing.assert_array_equal(
            changed_positions(run, b, j, dict(attention="causal")), np.arange(j, 12)
        )


def test_prefix_causal_prefix_is_bidirectional_rest_causal(run):
    b = image_batch(3, 4, 16)
    kw = dict(attention="prefix_causal", prefix_length=jnp.array([5, 5]))
    # Inside the prefix every prefix position sees patch j, and so does everything after the prefix.
    np.testing.assert_array_equal(changed_positions(run, b, 2, kw), np.arange(0, 12))
    # After the prefix, attention is causal.
    np.testing.assert_array_equal(changed_positions(run, b, 7, kw), np.arange(7, 12))
    np.testing.assert_array_equal(changed_positions(run, b, 5, kw), np.arange(5, 12))


def test_bidirectional_sees_everything(run):
    b = image_batch(3, 4, 16)
    for j in (0, 11):
        np.testing.assert_array_equal(
            changed_positions(run, b, j, dict(attention="bidirectional")), np.arange(12)
        )


@pytest.mark.parametrize("mode", ["causal", "prefix_causal", "bidirectional"])
def test_padding_content_and_budget_do_not_change_real_outputs(run, mode):
    kw = dict(attention=mode, prefix_length=jnp.array([4, 4]))
    ref = np.asarray(run(image_batch(3, 4, 16, pad_value=0), kw))[:, :12]
    for budget, pad in ((16, 255), (32, 0), (32, 77)):
        out = np.asarray(run(image_batch(3, 4, budget, pad_value=pad), kw))
        assert np.isfinite(out).all()  # padding queries attend to themselves: no NaN rows
        np.testing.assert_allclose(out[:, :12], ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("posemb", POSEMBS)
def test_padding_invariance_holds_for_every_posemb(posemb):
    vit = make_backbone(dict(variant=f"Pico/{P}", posemb=posemb))
    b16, b32 = image_batch(3, 4, 16), image_batch(3, 4, 32, pad_value=200)
    params = jax.jit(vit.init)(jax.random.key(0), b16["patches"], b16["coords"], b16["grid"], b16["length"])

    @jax.jit
    def apply(patches, coords, grid, length):
        return vit.apply(params, patches, coords, grid, length, prefix_length=jnp.array([4, 4]))[0]

    def encode(b):
        return np.asarray(apply(*(b[k] for k in ("patches", "coords", "grid", "length"))))

    np.testing.assert_allclose(encode(b32)[:, :12], encode(b16)[:, :12], atol=1e-5, rtol=0)


def test_dot_product_attention_matches_jax_softmax_attention():
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 3, 7, 8))  # [B=2, H=3, N=7, Dh=8] each
    mask = attention_mask(jnp.array([7, 4]), 7, "prefix_causal", jnp.array([3, 2]))

    def reference(q, k, v):  # jax.nn's softmax attention, in its [B,N,H,Dh] layout
        t = lambda x: x.swapaxes(1, 2)  # noqa: E731
        return t(jax.nn.dot_product_attention(t(q), t(k), t(v), mask=mask, implementation="xla"))

    ours = lambda q, k, v: dot_product_attention(q, k, v, mask)  # noqa: E731
    np.testing.assert_allclose(jax.jit(ours)(q, k, v), jax.jit(reference)(q, k, v), rtol=1e-5, atol=1e-6)
    loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)))  # noqa: E731
    grads = jax.jit(jax.grad(loss(ours), (0, 1, 2)))(q, k, v)
    expected = jax.jit(jax.grad(loss(reference), (0, 1, 2)))(q, k, v)
    for g, e in zip(grads, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
