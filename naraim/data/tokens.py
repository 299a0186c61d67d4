"""Image -> patch tokens of the batch contract: raster-order patches, coordinates, grid, padding to N."""

import numpy as np


def patchify(image: np.ndarray, patch_size: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Splits uint8 [R*P, C*P, 3] into raster-order patches.

    Returns patches uint8 [R*C, P*P*3] (each flattened as (row_in_patch, col_in_patch, channel)),
    coords int32 [R*C, 2] ((row, col) in the grid) and the grid (R, C).
    """
    h, w, ch = image.shape
    p = patch_size
    if h % p or w % p or h == 0 or w == 0:
        raise ValueError(f"image {h}x{w} is not a non-empty multiple of patch size {p}")
    rows, cols = h // p, w // p
    patches = image.reshape(rows, p, cols, p, ch).transpose(0, 2, 1, 3, 4).reshape(rows * cols, p * p * ch)
    rr, cc = np.meshgrid(np.arange(rows, dtype=np.int32), np.arange(cols, dtype=np.int32), indexing="ij")
    coords = np.stack([rr.ravel(), cc.ravel()], axis=-1)
    return patches, coords, (rows, cols)


def to_tokens(image: np.ndarray, *, patch_size: int, max_tokens: int) -> dict[str, np.ndarray]:
    """One example of the batch contract (without label): patches [N, P*P*3] uint8 zero-padded,
    coords [N, 2] int32 ((0, 0) where padded), grid [2] int32, length [] int32."""
    patches, coords, (rows, cols) = patchify(image, patch_size)
    n = rows * cols
    if n > max_tokens:
        raise ValueError(f"{rows}x{cols} patches exceed the token budget {max_tokens}")
    out_patches = np.zeros((max_tokens, patches.shape[1]), np.uint8)
    out_patches[:n] = patches
    out_coords = np.zeros((max_tokens, 2), np.int32)
    out_coords[:n] = coords
    return {
        "patches": out_patches,
        "coords": out_coords,
        "grid": np.array([rows, cols], np.int32),
        "length": np.int32(n),
    }


def unpatchify(patches: np.ndarray, grid: tuple[int, int], patch_size: int) -> np.ndarray:
    """Inverse of patchify for the first rows*cols raster-order patches: -> [rows*P, cols*P, 3]."""
    rows, cols = int(grid[0]), int(grid[1])
    p = patch_size
    x = np.asarray(patches)[: rows * cols].reshape(rows, cols, p, p, -1)
    return x.transpose(0, 2, 1, 3, 4).reshape(rows * p, cols * p, -1)
