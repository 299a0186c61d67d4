"""Image -> patch tokens of the batch contract: raster-order patches, coordinates, grid, padding to N."""

import numpy as np


def to_tokens(image: np.ndarray, *, patch_size: int, max_tokens: int) -> dict[str, np.ndarray]:
    """Patchifies uint8 [R*P, C*P, 3] into one example of the batch contract (without label).

    Returns patches uint8 [N, P*P*3] in raster order, each flattened as (row_in_patch, col_in_patch,
    channel), zero-padded; coords int32 [N, 2] ((row, col) in the grid, (0, 0) where padded); grid int32 [2]
    (R, C); length int32 [] = R*C.
    """
    h, w, ch = image.shape
    p = patch_size
    if h % p or w % p or h == 0 or w == 0:
        raise ValueError(f"image {h}x{w} is not a non-empty multiple of patch size {p}")
    rows, cols = h // p, w // p
    n = rows * cols
    if n > max_tokens:
        raise ValueError(f"{rows}x{cols} patches exceed the token budget {max_tokens}")
    patches = np.zeros((max_tokens, p * p * ch), np.uint8)  # written in place: one copy of the pixels
    patches[:n].reshape(rows, cols, p, p, ch)[...] = image.reshape(rows, p, cols, p, ch).transpose(
        0, 2, 1, 3, 4
    )
    coords = np.zeros((max_tokens, 2), np.int32)
    coords[:n, 0], coords[:n, 1] = np.divmod(np.arange(n, dtype=np.int32), cols)
    return {
        "patches": patches,
        "coords": coords,
        "grid": np.array([rows, cols], np.int32),
        "length": np.int32(n),
    }


def unpatchify(patches: np.ndarray, grid: tuple[int, int], patch_size: int) -> np.ndarray:
    """Inverse of to_tokens for the first rows*cols raster-order patches: -> [rows*P, cols*P, 3]."""
    rows, cols = int(grid[0]), int(grid[1])
    p = patch_size
    x = np.asarray(patches)[: rows * cols].reshape(rows, cols, p, p, -1)
    return x.transpose(0, 2, 1, 3, 4).reshape(rows * p, cols * p, -1)
