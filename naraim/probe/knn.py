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


@functools.partial(jax.jit, static_argnames=("num_classes", "ks"))
def _scores(bank, bank_labels, queries, num_classes: int, ks: tuple[int, ...], temperature: float):
    """[K, Q, C] summed votes of each query's k nearest bank images, for every k of ks (one top_k)."""
    sims = queries @ bank.T  # [Q, M]
    top, index = jax.lax.top_k(sims, max(ks))
    votes = jax.nn.one_hot(bank_labels[index], num_classes) * jnp.exp(top / temperature)[..., None]
    return jnp.stack([votes[:, :k].sum(axis=1) for k in ks])


def knn_correct_at(
    bank: np.ndarray,
    bank_labels: np.ndarray,
    queries: np.ndarray,
    query_labels: np.ndarray,
    num_classes: int,
    ks: tuple[int, ...] = (10, 20, 100, 200),
    temperature: float = 0.07,
    chunk: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """(top1 bool [Q, K], top5 bool [Q, K]) of weighted kNN at every k of ks, in one pass: bank [M, D] and
    queries [Q, D] unit vectors, labels int [M] / [Q]. Each k is capped at M; queries run in chunks of
    `chunk` (padded: one compile)."""
    ks = tuple(max(1, min(int(k), len(bank))) for k in ks)
    bank, labels = jnp.asarray(bank, jnp.float32), jnp.asarray(bank_labels, jnp.int32)
    top1, top5 = [], []
    for start in range(0, len(queries), chunk):
        q = np.asarray(queries[start : start + chunk], np.float32)
        padded = np.zeros((chunk, q.shape[1]), np.float32)
        padded[: len(q)] = q
        scores = _scores(bank, labels, jnp.asarray(padded), num_classes, ks, float(temperature))[:, : len(q)]
        y = jnp.asarray(query_labels[start : start + chunk], jnp.int32)
        top1.append(np.asarray(topk_correct(scores, y, 1)).T)
        top5.append(np.asarray(topk_correct(scores, y, 5)).T)
    if not top1:
        return np.zeros((0, len(ks)), bool), np.zeros((0, len(ks)), bool)
    return np.concatenate(top1), np.concatenate(top5)


def knn_correct(
    bank: np.ndarray,
    bank_labels: np.ndarray,
    queries: np.ndarray,
    query_labels: np.ndarray,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> tuple[np.ndarray, np.ndarray]:
    """(top1 bool [Q], top5 bool [Q]) of weighted kNN at one k (knn_correct_at)."""
    top1, top5 = knn_correct_at(bank, bank_labels, queries, query_labels, num_classes, (k,), temperature)
    return top1[:, 0], top5[:, 0]
