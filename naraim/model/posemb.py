"""Position embeddings from patch coordinates (row, col) in each image's own grid (rows, cols).

Additive embeddings ([B,N,D], added to the patch embedding):
  absolute_sincos_2d  fixed sin/cos of the row index (D/2 channels) ++ of the column index (D/2 channels)
  fractional          Dense(row/rows) + Dense(col/cols) (NaViT): positions as fractions of the grid, in [0, 1)
  learned             learned row table + learned column table (factorized), indices < max_side
  learned_2d          learned full table [rows, cols, D] (ViT's, timm's pos_embed) on model.posemb_grid,
                      resampled bilinearly to each image's own grid
Rotary embeddings (angles [B,N,Dh/2] applied to queries and keys in every attention layer):
  rope_1d             position = raster index row * cols + col
  rope_2d             half of each head's frequencies rotate with the row, half with the column
  none                no position information
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

POSEMBS = ("absolute_sincos_2d", "fractional", "learned", "learned_2d", "rope_1d", "rope_2d", "none")
ADDITIVE = ("absolute_sincos_2d", "fractional", "learned", "learned_2d")
ROTARY = ("rope_1d", "rope_2d")


def sincos_1d(pos: jax.Array, dim: int, base: float = 10000.0) -> jax.Array:
    """Transformer sin/cos encoding of positions [...] -> float32 [..., dim]: [sin(pos*w_i) ++ cos(pos*w_i)],
    w_i = base^(-i/(dim/2)) for i < dim/2. The NARAIM reference interleaves sin and cos instead, and
    big_vision's frequencies divide by dim/2 - 1 (docs/reproducing.md)."""
    if dim % 2:
        raise ValueError(f"sincos dimension must be even, got {dim}")
    omega = base ** (-jnp.arange(dim // 2, dtype=jnp.float32) / (dim // 2))
    angle = jnp.asarray(pos, jnp.float32)[..., None] * omega
    return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)


def absolute_sincos_2d(coords: jax.Array, dim: int) -> jax.Array:
    """coords int [B,N,2] (row, col) -> float32 [B,N,dim]: sincos_1d(row, dim/2) ++ sincos_1d(col, dim/2), the
    row half first (ml-aim and MAE put the column half first)."""
    if dim % 4:
        raise ValueError(f"absolute_sincos_2d needs a width divisible by 4, got {dim}")
    return jnp.concatenate(
        [sincos_1d(coords[..., 0], dim // 2), sincos_1d(coords[..., 1], dim // 2)], axis=-1
    )


FRACTIONAL_SCALES = ("count", "max_index")


def _token_grid(grid: jax.Array) -> jax.Array:
    """grid int [B,2] (one per row) or [B,N,2] (one per token, packed rows) -> broadcastable to [B,N,2]."""
    return grid if grid.ndim == 3 else grid[:, None, :]


def grid_fractions(coords: jax.Array, grid: jax.Array, scale: str = "count") -> jax.Array:
    """Returns float32 [B,N,2]: (row/rows, col/cols) in [0, 1) ('count'), or (row/(rows-1), col/(cols-1)) in
    [0, 1] ('max_index', the NARAIM reference's division by the largest index); 0 on an axis of side 1.
    grid: [B,2], or [B,N,2] each token's own image's grid."""
    offset = 1 if scale == "max_index" else 0
    sides = jnp.maximum(_token_grid(grid) - offset, 1).astype(jnp.float32)
    return coords.astype(jnp.float32) / sides


class Fractional(nn.Module):
    """NaViT's fractional embedding: phi_row(row/rows) + phi_col(col/cols), phi_* learned Dense(1 -> D);
    `scale` 'max_index' divides by rows - 1 and cols - 1 instead (grid_fractions)."""

    width: int
    scale: str = "count"

    @nn.compact
    def __call__(self, coords: jax.Array, grid: jax.Array) -> jax.Array:
        """coords int [B,N,2], grid int [B,2] or [B,N,2] (per token) -> float32 [B,N,D]."""
        frac = grid_fractions(coords, grid, self.scale)
        row = nn.Dense(self.width, name="row")(frac[..., :1])
        col = nn.Dense(self.width, name="col")(frac[..., 1:])
        return row + col


class Learned(nn.Module):
    """Learned factorized table: row_table[row] + col_table[col], each [max_side, D] (normal(0.02) init).

    max_side must cover the longest grid side, i.e. the token budget for a 1 x N image."""

    width: int
    max_side: int

    @nn.compact
    def __call__(self, coords: jax.Array) -> jax.Array:
        """coords int [B,N,2] -> float32 [B,N,D]; indices beyond max_side - 1 are clipped."""
        init = nn.initializers.normal(0.02)
        rows = self.param("row", init, (self.max_side, self.width))
        cols = self.param("col", init, (self.max_side, self.width))
        idx = jnp.clip(coords, 0, self.max_side - 1)
        return rows[idx[..., 0]] + cols[idx[..., 1]]


def parse_grid(text: str) -> tuple[int, int]:
    """'16x12' -> (16, 12) rows x cols; ValueError for anything else."""
    rows, sep, cols = str(text).lower().partition("x")
    if not sep or not rows.isdigit() or not cols.isdigit() or int(rows) < 1 or int(cols) < 1:
        raise ValueError(f"{text!r} is not ROWSxCOLS (e.g. 16x16)")
    return int(rows), int(cols)


def _source_index(
    index: jax.Array, side: jax.Array, table_side: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Bilinear taps on a table axis of table_side entries for position `index` of a grid axis of `side`
    entries (pixel centres aligned, align_corners=False as torch's interpolate): (lower, upper, weight of
    upper). The table's own side gives weight 0 at index: the table entry itself."""
    side = jnp.maximum(side, 1).astype(jnp.float32)
    src = (index.astype(jnp.float32) + 0.5) * (table_side / side) - 0.5
    src = jnp.clip(src, 0.0, table_side - 1)
    lower = jnp.floor(src)
    return lower.astype(jnp.int32), jnp.minimum(lower + 1, table_side - 1).astype(jnp.int32), src - lower


class Learned2D(nn.Module):
    """Learned full table [rows, cols, D] (normal(0.02) init), ViT's and timm's pos_embed: an image of the
    table's grid reads table[row, col]; any other grid reads the table resampled bilinearly to that grid
    (torch's interpolate with align_corners=False, no antialiasing), per token."""

    width: int
    grid: tuple[int, int]

    @nn.compact
    def __call__(self, coords: jax.Array, grid: jax.Array) -> jax.Array:
        """coords int [B,N,2], grid int [B,2] or [B,N,2] (per token) -> float32 [B,N,D]."""
        table = self.param("table", nn.initializers.normal(0.02), (*self.grid, self.width))
        sides = _token_grid(grid)
        r0, r1, fr = _source_index(coords[..., 0], sides[..., 0], self.grid[0])
        c0, c1, fc = _source_index(coords[..., 1], sides[..., 1], self.grid[1])
        fr, fc = fr[..., None], fc[..., None]
        top = table[r0, c0] * (1 - fc) + table[r0, c1] * fc
        bottom = table[r1, c0] * (1 - fc) + table[r1, c1] * fc
        return top * (1 - fr) + bottom * fr


def _frequencies(n: int, base: float) -> jax.Array:
    return base ** (-jnp.arange(n, dtype=jnp.float32) / n)


def rope_angles_1d(coords: jax.Array, grid: jax.Array, head_dim: int, base: float = 10000.0) -> jax.Array:
    """Rotary angles (radians) float32 [B,N,head_dim/2] for position = raster index row * cols + col; grid
    [B,2], or [B,N,2] each token's own image's grid."""
    if head_dim % 2:
        raise ValueError(f"rope_1d needs an even head dimension, got {head_dim}")
    pos = coords[..., 0] * _token_grid(grid)[..., 1] + coords[..., 1]
    return pos.astype(jnp.float32)[..., None] * _frequencies(head_dim // 2, base)


def rope_angles_2d(coords: jax.Array, head_dim: int, base: float = 10000.0) -> jax.Array:
    """Decomposed 2D rotary angles float32 [B,N,head_dim/2]: the first head_dim/4 frequencies rotate with the
    row, the other head_dim/4 (the same frequencies) with the column."""
    if head_dim % 4:
        raise ValueError(f"rope_2d needs a head dimension divisible by 4, got {head_dim}")
    freqs = _frequencies(head_dim // 4, base)
    pos = coords.astype(jnp.float32)
    return jnp.concatenate([pos[..., :1] * freqs, pos[..., 1:] * freqs], axis=-1)


def apply_rope(x: jax.Array, angles: jax.Array) -> jax.Array:
    """Rotates pairs (x[..., i], x[..., i + Dh/2]) by angles[..., i].

    x [B,N,H,Dh], angles [B,N,Dh/2] -> x.shape.

    Computed in float32 and cast back to x.dtype. Dot products of rotated queries and keys depend on
    positions only through their difference."""
    half = x.shape[-1] // 2
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1 = x[..., :half].astype(jnp.float32)
    x2 = x[..., half:].astype(jnp.float32)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)
