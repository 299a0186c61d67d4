"""Patch orderings (DARL section 4.4): permutations of a (rows, cols) patch grid.

- `raster`: row by row, left to right.
- `nested_raster(b)`: split the grid into b x b blocks, visit the blocks in raster order and the
  patches inside each block in raster order.
- `round_robin(b)`: same blocks, each block's patches in raster order; take the first patch of
  every block (blocks in raster order), then the second patch of every block, and so on.

Grids whose sides are not multiples of b get smaller blocks along the bottom and right edges;
a block that has run out of patches is skipped by round_robin. A permutation `perm` lists raster
indices (row * cols + col) in visiting order. Orderings are applied to each example after
tokenisation; the coordinates travel with the patches, so every position embedding stays correct,
and `to_raster` undoes any ordering from the coordinates alone.
"""

import re

import numpy as np

from naraim.errors import UserError

_PATTERN = re.compile(r"^(raster|nested_raster|round_robin)(?:\((\d+)\))?$")


def parse_ordering(name: str) -> tuple[str, int]:
    """'raster' -> ('raster', 1); 'nested_raster(4)' -> ('nested_raster', 4); 'round_robin(2)' likewise."""
    match = _PATTERN.match(name.replace(" ", ""))
    if match is None or (match.group(1) != "raster") != (match.group(2) is not None):
        raise UserError(
            f"data.ordering={name!r} is not an ordering: use 'raster', 'nested_raster(b)' or 'round_robin(b)'"
        )
    block = int(match.group(2) or 1)
    if block < 1:
        raise UserError(f"data.ordering={name!r}: the block size b must be >= 1")
    return match.group(1), block


def ordering_permutation(name: str, rows: int, cols: int) -> np.ndarray:
    """Raster indices int64 [rows*cols] in the visiting order of ordering `name` on a rows x cols grid."""
    kind, b = parse_ordering(name)
    row, col = np.divmod(np.arange(rows * cols), cols)
    if kind == "raster":
        return np.arange(rows * cols)
    block_cols = -(-cols // b)
    block_id = (row // b) * block_cols + col // b
    block_width = np.minimum(b, cols - (col // b) * b)
    index_in_block = (row % b) * block_width + col % b
    if kind == "nested_raster":
        return np.lexsort((index_in_block, block_id))
    return np.lexsort((block_id, index_in_block))


def inverse_permutation(perm: np.ndarray) -> np.ndarray:
    """The permutation `inv` with inv[perm[k]] = k, so x[perm][inv] == x."""
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size)
    return inv


def apply_ordering(
    patches: np.ndarray, coords: np.ndarray, grid: np.ndarray, length: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Reorders one example's raster-order tokens: patches [N, D], coords [N, 2] int32, grid (rows, cols).

    The first `length` = rows * cols tokens are permuted, padding stays at the end. Returns new arrays.
    """
    rows, cols = int(grid[0]), int(grid[1])
    if length != rows * cols:
        raise ValueError(f"ordering needs the full grid: length {length} != rows*cols {rows * cols}")
    perm = ordering_permutation(name, rows, cols)
    patches, coords = patches.copy(), coords.copy()
    patches[:length] = patches[perm]
    coords[:length] = coords[perm]
    return patches, coords


def to_raster(values: np.ndarray, coords: np.ndarray, grid: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Puts per-token values back in raster order using the coordinates they travelled with.

    values [B, N, ...], coords [B, N, 2] int32, grid [B, 2], length [B]. Token k of example i lands at
    raster index row * cols + col; positions >= length[i] stay as they are (padding). Works for any
    ordering, including raster itself (identity).
    """
    out = np.array(values, copy=True)
    for i in range(values.shape[0]):
        n = int(length[i])
        target = coords[i, :n, 0] * int(grid[i, 1]) + coords[i, :n, 1]
        out[i, target] = values[i, :n]
    return out
