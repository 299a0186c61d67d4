"""k-nearest-neighbour classification of frozen features (training-free; DINO's weighted kNN).

Each image is described by the mean of its real tokens' features, L2-normalised. A query's k most similar
bank images (cosine similarity) vote for their labels with weight exp(similarity / temperature); the
class scores are the summed votes.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from naraim.probe.results import topk_correct


def normalise(x: jax.Array) -> jax.Array:
    """x [..., D] scaled to unit L2 norm along the last axis."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("num_classes", "k"))
def _scores(bank, bank_labels, queries, num_classes: int, k: int, temperature: float):
    sims = queries @ bank.T  # [Q, M]
    top, index = jax.lax.top_k(sims, k)
    votes = jax.nn.one_hot(bank_labels[index], num_classes) * jnp.exp(top / temperature)[..., None]
    return votes.sum(axis=1)


def knn_correct(
    bank: np.ndarray,
    bank_labels: np.ndarray,
    queries: np.ndarray,
    query_labels: np.ndarray,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """(top1 bool [Q], top5 bool [Q]) of weighted kNN: bank [M, D] and queries [Q, D] unit vectors, labels
    int [M] / [Q]. k is capped at M; queries run in chunks of `chunk` (padded: one compile)."""
    k = max(1, min(int(k), len(bank)))
    bank, labels = jnp.asarray(bank, jnp.float32), jnp.asarray(bank_labels, jnp.int32)
    top1, top5 = [], []
    for start in range(0, len(queries), chunk):
        q = np.asarray(queries[start : start + chunk], np.float32)
        padded = np.zeros((chunk, q.shape[1]), np.float32)
        padded[: len(q)] = q
        scores = _scores(bank, labels, jnp.asarray(padded), num_classes, k, float(temperature))[: len(q)]
        y = jnp.asarray(query_labels[start : start + chunk], jnp.int32)
        top1.append(np.asarray(topk_correct(scores, y, 1)))
        top5.append(np.asarray(topk_correct(scores, y, 5)))
    if not top1:
        return np.zeros(0, bool), np.zeros(0, bool)
    return np.concatenate(top1), np.concatenate(top5)
