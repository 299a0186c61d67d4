"""Patch orderings: exact DARL definitions, arbitrary grid sides, round trips through coordinates."""

import numpy as np
import pytest

from naraim.data import orderings
from naraim.errors import UserError

NAMES = ["raster", "nested_raster(2)", "nested_raster(4)", "round_robin(2)", "round_robin(3)"]


def visit_order(name, rows, cols):
    """grid [rows, cols] holding the step at which each patch is visited."""
    return orderings.inverse_permutation(orderings.ordering_permutation(name, rows, cols)).reshape(rows, cols)


def test_nested_raster_visits_blocks_then_patches_in_raster_order():
    expected = [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    np.testing.assert_array_equal(visit_order("nested_raster(2)", 4, 4), expected)


def test_round_robin_takes_one_patch_per_block_per_cycle():
    expected = [[0, 4, 1, 5], [8, 12, 9, 13], [2, 6, 3, 7], [10, 14, 11, 15]]
    np.testing.assert_array_equal(visit_order("round_robin(2)", 4, 4), expected)


def test_sides_not_multiple_of_block_get_edge_blocks():
    # Blocks of a 3x5 grid with b=2: widths 2,2,1 and heights 2,1; exhausted blocks are skipped.
    np.testing.assert_array_equal(
        visit_order("nested_raster(2)", 3, 5), [[0, 1, 4, 5, 8], [2, 3, 6, 7, 9], [10, 11, 12, 13, 14]]
    )
    np.testing.assert_array_equal(
        visit_order("round_robin(2)", 3, 5), [[0, 6, 1, 7, 2], [11, 13, 12, 14, 8], [3, 9, 4, 10, 5]]
    )


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 7), (7, 1), (5, 9), (16, 16), (11, 23)])
def test_permutation_and_inverse_round_trip(name, rows, cols):
    perm = orderings.ordering_permutation(name, rows, cols)
    np.testing.assert_array_equal(np.sort(perm), np.arange(rows * cols))
    x = np.random.default_rng(0).normal(size=rows * cols)
    np.testing.assert_array_equal(x[perm][orderings.inverse_permutation(perm)], x)


@pytest.mark.parametrize("name", NAMES)
def test_apply_ordering_keeps_coords_with_patches_and_to_raster_undoes_it(name):
    rows, cols, budget = 5, 7, 40
    n = rows * cols
    patches = np.zeros((2, budget, 6), np.uint8)
    patches[:, :n] = np.arange(n, dtype=np.uint8)[:, None]
    coords = np.zeros((2, budget, 2), np.int32)
    coords[:, :n] = np.stack(np.divmod(np.arange(n), cols), -1)
    grid = np.array([[rows, cols]] * 2, np.int32)
    length = np.array([n, n], np.int32)
    new_patches, new_coords = orderings.apply_ordering(patches[0], coords[0], grid[0], n, name)
    # Each patch keeps its own coordinates, padding stays at the end.
    raster_index = new_coords[:n, 0] * cols + new_coords[:n, 1]
    np.testing.assert_array_equal(new_patches[:n, 0], raster_index)
    np.testing.assert_array_equal(new_patches[n:], 0)
    np.testing.assert_array_equal(raster_index, orderings.ordering_permutation(name, rows, cols))
    batch = np.stack([new_patches, new_patches])
    restored = orderings.to_raster(batch, np.stack([new_coords, new_coords]), grid, length)
    np.testing.assert_array_equal(restored, patches)


@pytest.mark.parametrize("bad", ["zigzag", "raster(2)", "nested_raster", "round_robin(x)", "round_robin(0)"])
def test_bad_names_raise_user_error(bad):
    with pytest.raises(UserError, match="data.ordering"):
        orderings.parse_ordering(bad)
