import numpy as np
import pytest

from naraim.data.tokens import to_tokens, unpatchify


def _image(rows, cols, p):
    return np.random.default_rng(0).integers(0, 256, (rows * p, cols * p, 3), dtype=np.uint8)


def test_patches_are_in_raster_order_with_row_col_channel_layout():
    p = 4
    img = _image(3, 5, p)
    ex = to_tokens(img, patch_size=p, max_tokens=15)
    patches, coords, grid = ex["patches"], ex["coords"], tuple(ex["grid"])
    assert grid == (3, 5) and patches.shape == (15, p * p * 3) and patches.dtype == np.uint8
    for k in range(15):
        r, c = divmod(k, 5)
        assert tuple(coords[k]) == (r, c)
        np.testing.assert_array_equal(patches[k], img[r * p : (r + 1) * p, c * p : (c + 1) * p].reshape(-1))
    np.testing.assert_array_equal(unpatchify(patches, grid, p), img)


def test_to_tokens_pads_to_budget_with_zeros():
    p = 2
    img = _image(2, 3, p) | 1  # no zero pixels, so padding is recognisable
    ex = to_tokens(img, patch_size=p, max_tokens=10)
    assert ex["patches"].shape == (10, 12) and ex["patches"].dtype == np.uint8
    assert ex["coords"].dtype == np.int32 and ex["grid"].dtype == np.int32 and ex["length"].dtype == np.int32
    assert int(ex["length"]) == 6 and tuple(ex["grid"]) == (2, 3)
    assert (ex["patches"][:6] > 0).all() and (ex["patches"][6:] == 0).all()
    assert (ex["coords"][6:] == 0).all() and tuple(ex["coords"][5]) == (1, 2)


def test_to_tokens_rejects_bad_geometry():
    with pytest.raises(ValueError):
        to_tokens(_image(4, 4, 2), patch_size=2, max_tokens=15)
    with pytest.raises(ValueError):
        to_tokens(np.zeros((5, 4, 3), np.uint8), patch_size=2, max_tokens=16)
