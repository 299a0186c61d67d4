"""Attentive probe head: padding never matters, BatchNorm statistics use real tokens, feature selection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from naraim.errors import UserError
from naraim.model.vit import make_backbone
from naraim.probe import features as F
from naraim.probe.heads import MaskedBatchNorm, ProbeHead, ReferenceProbeHead, single_query_attention


def padded_images(budget: int, pad_value: int) -> dict:
    """Two images (2x3 and 3x3 patches of side 2) padded to `budget` tokens."""
    rng = np.random.default_rng(0)
    patches = np.full((2, budget, 12), pad_value, np.uint8)
    coords = np.zeros((2, budget, 2), np.int32)
    grids = [(2, 3), (3, 3)]
    for b, (rows, cols) in enumerate(grids):
        n = rows * cols
        patches[b, :n] = rng.integers(0, 256, (n, 12), dtype=np.uint8)
        coords[b, :n] = np.stack(np.divmod(np.arange(n), cols), axis=-1)
    return dict(
        patches=patches, coords=coords, grid=np.array(grids, np.int32), length=np.array([6, 9], np.int32)
    )


@pytest.fixture(scope="module")
def features():
    """A jitted function: padded batch -> mean of the last blocks' features of a tiny bidirectional ViT."""
    vit = make_backbone(dict(variant="Pico/2", attention="bidirectional"))
    b = padded_images(16, 0)
    params = jax.jit(vit.init)(jax.random.key(0), b["patches"], b["coords"], b["grid"], b["length"])

    @jax.jit
    def run(b):
        _, inter = vit.apply(params, b["patches"], b["coords"], b["grid"], b["length"])
        stack = F.block_stack(inter, (0, 1))
        return F.spec_features(stack, (F.MEAN,), (0, 1), depth=2, last_k=6)[0]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("use_map_mlp", [False, True])
def test_probe_logits_ignore_padding_content_and_budget(features, use_map_mlp):
    head = ProbeHead(num_classes=5, num_heads=4, use_map_mlp=use_map_mlp)
    train_step = jax.jit(lambda v, f, n: head.apply(v, f, n, True, mutable=["batch_stats"]))
    evaluate = jax.jit(lambda v, f, n: head.apply(v, f, n, False))

    b16 = padded_images(16, 0)
    variables = jax.jit(head.init, static_argnums=3)(jax.random.key(1), features(b16), b16["length"], True)
    ref_train, ref_stats = train_step(variables, features(b16), b16["length"])
    trained = dict(variables, **ref_stats)
    ref_eval = evaluate(trained, features(b16), b16["length"])
    assert ref_train.shape == (2, 5)
    assert np.abs(np.asarray(ref_eval - ref_train)).max() > 1e-6  # eval uses the running statistics
    for budget, pad in ((16, 255), (32, 0), (32, 123)):
        b = padded_images(budget, pad)
        logits, stats = train_step(variables, features(b), b["length"])
        np.testing.assert_allclose(logits, ref_train, atol=1e-5, rtol=0)
        for s, s_ref in zip(jax.tree.leaves(stats), jax.tree.leaves(ref_stats), strict=True):
            np.testing.assert_allclose(s, s_ref, atol=1e-5, rtol=0)
        np.testing.assert_allclose(evaluate(trained, features(b), b["length"]), ref_eval, atol=1e-5, rtol=0)


def test_masked_batchnorm_uses_real_tokens_only():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (2, 5, 4)).astype(np.float32)
    x[0, 3:] = 1e6  # padding: must not enter the statistics
    length = jnp.array([3, 5])
    mask = np.arange(5)[None] < np.asarray(length)[:, None]
    bn = MaskedBatchNorm(momentum=0.5)
    variables = bn.init(jax.random.key(0), x, mask, True)
    (mean, inv_std), stats = bn.apply(variables, x, mask, True, mutable=["batch_stats"])
    real = x[mask]
    np.testing.assert_allclose(mean, real.mean(0), rtol=1e-5)
    np.testing.assert_allclose(inv_std, 1 / np.sqrt(real.var(0) + 1e-6), rtol=1e-4)
    np.testing.assert_allclose(stats["batch_stats"]["mean"], 0.5 * real.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["batch_stats"]["var"], 0.5 + 0.5 * real.var(0), rtol=1e-5)
    mean, inv_std = bn.apply(stats, x, mask, False)
    np.testing.assert_allclose(mean, 0.5 * real.mean(0), rtol=1e-5)
    np.testing.assert_allclose(inv_std, 1 / np.sqrt(0.5 + 0.5 * real.var(0) + 1e-6), rtol=1e-4)


def test_single_query_attention_equals_attention_over_normalised_projected_tokens():
    """Folding the BatchNorm and the projections into the query gives attention over the projected
    normalised tokens; padding is masked, and a row with one real token gets that token's value."""
    rng = np.random.default_rng(0)
    batch, tokens, dim, heads, head_dim = 3, 7, 8, 2, 4
    x = jnp.asarray(rng.normal(2.0, 3.0, size=(batch, tokens, dim)), jnp.float32)
    mask = np.arange(tokens)[None] < np.array([7, 3, 1])[:, None]
    mean = jnp.asarray(rng.normal(2.0, 1.0, size=dim), jnp.float32)
    inv_std = jnp.asarray(rng.uniform(0.2, 1.0, size=dim), jnp.float32)
    query = jnp.asarray(rng.normal(size=(heads, head_dim)), jnp.float32)
    w_key, w_value = (jnp.asarray(rng.normal(size=(dim, heads, head_dim)), jnp.float32) for _ in range(2))
    z = (x - mean) * inv_std
    keys, values = jnp.einsum("bnd,dhk->bnhk", z, w_key), jnp.einsum("bnd,dhk->bnhk", z, w_value)
    q = jnp.broadcast_to(query[None, None], (batch, 1, heads, head_dim))
    expected = jax.nn.dot_product_attention(q, keys, values, mask=mask[:, None, None, :])[:, 0]
    got = single_query_attention(x, mask, query, w_key, w_value, mean, inv_std)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got[2], np.asarray(values[2, 0]), atol=1e-4)  # one real token: its value


def test_probe_has_no_qkv_bias_and_one_query():
    head = ProbeHead(num_classes=3, num_heads=2)
    feats, n = jnp.ones((1, 4, 8)), jnp.array([4])
    params = jax.eval_shape(lambda f, n: head.init(jax.random.key(0), f, n, False), feats, n)["params"]
    assert set(params) == {"query", "key", "value", "classifier"}
    assert set(params["key"]) == {"kernel"} and set(params["value"]) == {"kernel"}
    assert set(params["classifier"]) == {"kernel"}  # ml-aim's linear_bias=False
    assert params["query"].shape == (8,)


def test_feature_specs_parse_and_select_blocks_or_the_mean_of_the_last_k():
    assert F.parse_blocks("mean", 8) == (F.MEAN,)
    assert F.parse_blocks("all,mean", 3) == (0, 1, 2, F.MEAN)
    assert F.parse_blocks("0,-1,7,0", 8) == (0, 7)
    for bad, match in [("8", "outside"), ("x", "not a block index"), ("", "not a block index")]:
        with pytest.raises(UserError, match=match):
            F.parse_blocks(bad, 8)
    assert F.needed_blocks((3, F.MEAN), 8, last_k=2) == (3, 6, 7)
    assert F.spec_name(F.MEAN, 6) == "mean_last_6" and F.spec_name(3, 6) == 3
    inter = {f"block_{i}": jnp.full((1, 2, 3), float(i)) for i in range(8)}
    blocks = F.needed_blocks((3, -1 % 8, F.MEAN), 8, last_k=6)
    feats = F.spec_features(F.block_stack(inter, blocks), (3, 7, F.MEAN), blocks, depth=8, last_k=6)
    assert feats.shape == (3, 1, 2, 3)
    np.testing.assert_allclose(feats[:, 0, 0, 0], [3.0, 7.0, np.mean([2, 3, 4, 5, 6, 7])])
    small = {k: inter[k] for k in ("block_0", "block_1")}
    mean2 = F.spec_features(F.block_stack(small, (0, 1)), (F.MEAN,), (0, 1), depth=2, last_k=6)
    np.testing.assert_allclose(mean2, 0.5)


def test_a_block_range_is_the_mean_of_those_blocks_as_in_aims_tables():
    """AIM reports the mean of blocks 14-19 of 24; 'first-last' is that spec, named mean_first-last."""
    assert F.parse_blocks("14-19,mean,14-19", 24) == ((14, 19), F.MEAN)
    assert F.spec_name((14, 19), 6) == "mean_14-19"
    for bad, match in [("3-1", "first <= last"), ("2-8", "first <= last"), ("1-x", "not a block index")]:
        with pytest.raises(UserError, match=match):
            F.parse_blocks(bad, 8)
    inter = {f"block_{i}": jnp.full((1, 2, 3), float(i)) for i in range(8)}
    specs = ((2, 4), 7, (5, 5))
    blocks = F.needed_blocks(specs, 8, last_k=6)
    assert blocks == (2, 3, 4, 5, 7)
    feats = F.spec_features(F.block_stack(inter, blocks), specs, blocks, depth=8, last_k=6)
    np.testing.assert_allclose(feats[:, 0, 0, 0], [3.0, 7.0, 5.0])


def test_reference_probe_head_has_qkv_out_biases_and_masks_padding():
    """The NARAIM reference's head: a query through multi-head attention with q/k/v/out projections and
    biases, no BatchNorm; padding (content and budget) never changes its logits."""
    head = ReferenceProbeHead(num_classes=3, num_heads=2)
    feats, n = jnp.ones((1, 4, 8)), jnp.array([4])
    variables = jax.eval_shape(lambda f, n: head.init(jax.random.key(0), f, n, False), feats, n)
    assert set(variables) == {"params"}  # no batch_stats: no BatchNorm
    params = variables["params"]
    assert set(params) == {"query", "attention", "classifier"}
    for proj in ("query", "key", "value", "out"):
        assert set(params["attention"][proj]) == {"kernel", "bias"}
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
    length = jnp.array([3, 5])
    v = head.init(jax.random.key(1), x, length, False)
    ref = head.apply(v, x, length, False)
    garbage = x.at[0, 3:].set(100.0)
    np.testing.assert_allclose(head.apply(v, garbage, length, False), ref, rtol=1e-5, atol=1e-6)
    longer = jnp.concatenate([x, jnp.full((2, 3, 8), -7.0)], axis=1)
    np.testing.assert_allclose(head.apply(v, longer, length, False), ref, rtol=1e-5, atol=1e-6)
