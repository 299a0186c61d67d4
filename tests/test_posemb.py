"""Position embeddings: sin/cos formula, fractional on 1-row grids, learned tables, rotary invariance."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from naraim.model import posemb
from naraim.model.vit import make_backbone


def test_absolute_sincos_2d_matches_formula():
    dim = 16
    coords = jnp.array([[[0, 0], [2, 5], [7, 1]]], jnp.int32)
    got = np.asarray(posemb.absolute_sincos_2d(coords, dim))
    quarter = dim // 4
    for n, (row, col) in enumerate(np.asarray(coords[0])):
        for axis, pos in enumerate((row, col)):
            for i in range(quarter):
                w = 10000.0 ** (-i / quarter)
                base = axis * dim // 2
                assert got[0, n, base + i] == pytest.approx(math.sin(pos * w), abs=1e-6)
                assert got[0, n, base + quarter + i] == pytest.approx(math.cos(pos * w), abs=1e-6)


@pytest.mark.parametrize("grid", [(1, 7), (7, 1), (1, 1)])
def test_fractional_is_finite_for_one_row_or_column(grid):
    rows, cols = grid
    n = rows * cols
    coords = jnp.asarray(np.stack(np.divmod(np.arange(n), cols), axis=-1)[None], jnp.int32)
    g = jnp.array([grid], jnp.int32)
    frac = np.asarray(posemb.grid_fractions(coords, g))
    np.testing.assert_allclose(frac[0, :, 0], np.arange(n) // cols / rows)
    np.testing.assert_allclose(frac[0, :, 1], np.arange(n) % cols / cols)
    module = posemb.Fractional(8)
    params = module.init(jax.random.key(0), coords, g)
    assert np.isfinite(np.asarray(module.apply(params, coords, g))).all()
    frac = np.asarray(posemb.grid_fractions(coords, g, "max_index"))  # row / (rows - 1), 0 on a side of 1
    np.testing.assert_allclose(frac[0, :, 0], np.arange(n) // cols / max(rows - 1, 1))
    np.testing.assert_allclose(frac[0, :, 1], np.arange(n) % cols / max(cols - 1, 1))


def test_fractional_max_index_reaches_one_at_the_last_row_and_column():
    coords = jnp.asarray([[[0, 0], [2, 4], [1, 2]]], jnp.int32)
    frac = np.asarray(posemb.grid_fractions(coords, jnp.array([[3, 5]]), "max_index"))
    np.testing.assert_allclose(frac[0], [[0, 0], [1, 1], [0.5, 0.5]])


def test_fractional_depends_on_fraction_not_index():
    module = posemb.Fractional(8)
    small = (jnp.array([[[1, 1]]]), jnp.array([[2, 2]]))
    large = (jnp.array([[[3, 3]]]), jnp.array([[6, 6]]))
    params = module.init(jax.random.key(0), *small)
    np.testing.assert_allclose(module.apply(params, *small), module.apply(params, *large), atol=1e-6)


def test_learned_is_row_plus_column_table():
    module = posemb.Learned(8, max_side=10)
    coords = jnp.array([[[2, 9], [0, 3]]])
    params = module.init(jax.random.key(0), coords)
    out = module.apply(params, coords)
    p = params["params"]
    np.testing.assert_allclose(out[0, 0], p["row"][2] + p["col"][9])
    np.testing.assert_allclose(out[0, 1], p["row"][0] + p["col"][3])


def rope_logits(angles_fn, coords, grid, head_dim=8):
    key = jax.random.key(0)
    q = jax.random.normal(key, (1, coords.shape[1], 2, head_dim))
    k = jax.random.normal(jax.random.fold_in(key, 1), q.shape)
    angles = angles_fn(coords, grid, head_dim)
    return jnp.einsum("bqhd,bkhd->bhqk", posemb.apply_rope(q, angles), posemb.apply_rope(k, angles))


@pytest.mark.parametrize(
    "angles_fn",
    [posemb.rope_angles_1d, lambda c, g, d: posemb.rope_angles_2d(c, d)],
    ids=["rope_1d", "rope_2d"],
)
def test_rope_logits_depend_only_on_relative_offsets(angles_fn):
    grid = jnp.array([[4, 5]])
    coords = jnp.asarray(np.stack(np.divmod(np.arange(20), 5), axis=-1)[None], jnp.int32)
    ref = rope_logits(angles_fn, coords, grid)
    for shift in ([0, 3], [2, 0], [5, 7]):
        shifted = rope_logits(angles_fn, coords + jnp.array(shift), grid)
        np.testing.assert_allclose(shifted, ref, atol=1e-4)
    # ...and they do depend on the positions (a rotation actually happens).
    scrambled = coords[:, ::-1]
    assert np.abs(np.asarray(rope_logits(angles_fn, scrambled, grid) - ref)).max() > 1e-2


def test_rope_2d_splits_frequencies_between_row_and_column():
    angles = np.asarray(posemb.rope_angles_2d(jnp.array([[[3, 0], [0, 3]]]), 8))
    np.testing.assert_allclose(angles[0, 0, :2], 3 * np.array([1.0, 0.01]), rtol=1e-6)
    np.testing.assert_array_equal(angles[0, 0, 2:], 0)
    np.testing.assert_array_equal(angles[0, 1, :2], 0)
    np.testing.assert_allclose(angles[0, 1, 2:], 3 * np.array([1.0, 0.01]), rtol=1e-6)


def test_rope_2d_backbone_is_translation_invariant():
    """With only rotary positions, shifting every patch's coordinates leaves the encoder output unchanged."""
    vit = make_backbone(dict(variant="Pico/2", posemb="rope_2d", attention="bidirectional"))
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (1, 6, 12), dtype=np.uint8)
    coords = np.stack(np.divmod(np.arange(6), 3), axis=-1)[None].astype(np.int32)
    grid, length = np.array([[2, 3]], np.int32), np.array([6], np.int32)
    params = jax.jit(vit.init)(jax.random.key(0), patches, coords, grid, length)
    apply = jax.jit(vit.apply)
    ref, _ = apply(params, patches, coords, grid, length)
    out, _ = apply(params, patches, coords + 4, grid, length)
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_learned_2d_reads_its_table_on_its_own_grid_and_per_token_grids_as_per_image_ones():
    module = posemb.Learned2D(8, (3, 4))
    rows, cols = np.divmod(np.arange(12), 4)
    coords = jnp.asarray(np.stack([rows, cols], -1)[None])
    params = module.init(jax.random.key(0), coords, jnp.array([[3, 4]]))
    table = np.asarray(params["params"]["table"])
    np.testing.assert_array_equal(module.apply(params, coords, jnp.array([[3, 4]]))[0], table.reshape(12, 8))
    other = jnp.asarray(np.stack(np.divmod(np.arange(10), 2), -1)[None])  # a 5 x 2 grid
    per_image = module.apply(params, other, jnp.array([[5, 2]]))
    per_token = module.apply(params, other, jnp.broadcast_to(jnp.array([5, 2]), (1, 10, 2)))
    np.testing.assert_array_equal(per_image, per_token)
    assert not np.allclose(per_image[0, :2], table[0, :2])  # resampled, not cropped
