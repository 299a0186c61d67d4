"""Top-k correctness of classifier logits (on device) and its host-side accumulation over an eval set."""

import jax.numpy as jnp
import numpy as np


def topk_correct(logits: jnp.ndarray, label: jnp.ndarray, k: int) -> jnp.ndarray:
    """Whether each label is among its example's k highest logits: logits [B,C], label [B] -> bool [B].

    Ties count in the label's favour (rank = number of logits strictly above the label's logit).
    """
    label_logit = jnp.take_along_axis(logits, label[:, None], axis=1)
    rank = jnp.sum(logits > label_logit, axis=1)
    return rank < k


class Accumulator:
    """Collects per-example top-1/top-5 correctness and aspect ratio of the valid examples of eval batches."""

    def __init__(self) -> None:
        self._top1: list[np.ndarray] = []
        self._top5: list[np.ndarray] = []
        self._ar: list[np.ndarray] = []

    def add(self, top1: np.ndarray, top5: np.ndarray, aspect_ratio: np.ndarray, valid: np.ndarray) -> None:
        """top1, top5, valid: bool [B]; aspect_ratio: float [B]. Examples with valid False are dropped."""
        valid = np.asarray(valid, dtype=bool)
        self._top1.append(np.asarray(top1, dtype=bool)[valid])
        self._top5.append(np.asarray(top5, dtype=bool)[valid])
        self._ar.append(np.asarray(aspect_ratio, dtype=np.float64)[valid])

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(top1 bool [M], top5 bool [M], aspect_ratio float [M]) over the M valid examples seen."""
        if not self._top1:
            return np.zeros(0, bool), np.zeros(0, bool), np.zeros(0)
        return np.concatenate(self._top1), np.concatenate(self._top5), np.concatenate(self._ar)
