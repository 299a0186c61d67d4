"""Aspect-ratio bins (width / height of the source image), as in the NARAIM paper's Figure 3."""

import math
from collections.abc import Sequence

import numpy as np

from naraim.errors import UserError

DEFAULT_EDGES: tuple[float, ...] = (0.0, 0.5, 0.75, 1.33, 2.0, math.inf)


def check_edges(edges: Sequence[float]) -> tuple[float, ...]:
    """`edges` as floats; UserError unless there are >= 2 strictly increasing, non-negative edges."""
    edges = tuple(float(e) for e in edges)
    if len(edges) < 2 or edges[0] < 0 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise UserError(
            f"aspect_ratio_bins={edges} is not valid: give at least two strictly increasing edges >= 0, "
            "e.g. (0, 0.5, 0.75, 1.33, 2, inf)"
        )
    return edges


def assign_bins(aspect_ratio: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Bin index of each aspect ratio: bin i holds edges[i] <= ar < edges[i+1]; -1 outside all bins.

    aspect_ratio: float [B] (width / height). Returns int64 [B].
    """
    edges_arr = np.asarray(check_edges(edges))
    ar = np.asarray(aspect_ratio, dtype=np.float64)
    idx = np.searchsorted(edges_arr, ar, side="right") - 1
    inside = (idx >= 0) & (idx < len(edges_arr) - 1)
    return np.where(inside, idx, -1)
