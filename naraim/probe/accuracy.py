"""Top-k correctness of classifier logits (on device) and its host-side accumulation over an eval set."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils


def topk_correct(logits: jnp.ndarray, label: jnp.ndarray, k: int) -> jnp.ndarray:
    """Whether each label is among its example's k highest logits: logits [..., B, C], label [B] -> bool
    [..., B] (leading axes: e.g. the heads of a sweep).

    Ties count in the label's favour (rank = number of logits strictly above the label's logit).
    """
    label = jnp.broadcast_to(label, logits.shape[:-1])
    label_logit = jnp.take_along_axis(logits, label[..., None], axis=-1)
    rank = jnp.sum(logits > label_logit, axis=-1)
    return rank < k


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of an array sharded along axis 0 (all rows on a single process), as numpy."""
    if jax.process_count() == 1:
        return np.asarray(x)
    shards = {s.index[0].start or 0: s.data for s in x.addressable_shards}
    return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])


class Accumulator:
    """Collects per-example top-1/top-5 correctness (bool [B] or [B, heads...]), aspect ratio and validity of
    this process's eval rows."""

    def __init__(self) -> None:
        self._cols: list[list[np.ndarray]] = [[], [], [], []]

    def add(self, top1: np.ndarray, top5: np.ndarray, aspect_ratio: np.ndarray, valid: np.ndarray) -> None:
        """top1, top5: bool [B, ...]; valid: bool [B]; aspect_ratio: float [B] (this process's rows)."""
        for col, x, dtype in zip(
            self._cols, (top1, top5, aspect_ratio, valid), (bool, bool, np.float64, bool), strict=True
        ):
            col.append(np.asarray(x, dtype=dtype))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(top1 bool [M, ...], top5 bool [M, ...], aspect_ratio float [M]) over the M valid examples of all
        processes (a collective when there are several processes: all must call it)."""
        if not self._cols[0]:
            return np.zeros(0, bool), np.zeros(0, bool), np.zeros(0)
        top1, top5, ar, valid = (np.concatenate(c) for c in self._cols)
        if jax.process_count() > 1:
            top1, top5, ar, valid = (
                np.asarray(multihost_utils.process_allgather(x, tiled=True)) for x in (top1, top5, ar, valid)
            )
        return top1[valid], top5[valid], ar[valid]
