"""Feature caching for frozen protocols: the backbone's features of every training example, computed once.

Only valid when the training transforms have no randomness (every epoch would see the same inputs); the
head then trains on shuffled batches of the cache. Memory: examples x max_tokens x width x 4 bytes on
the host (e.g. 2,000 x 64 x 64 floats = 33 MB for the demo).
"""

from collections.abc import Callable, Iterator

import numpy as np
from jax.sharding import Mesh

from naraim.probe.accuracy import local_rows
from naraim.train.mesh import global_batch

CACHE_KEYS = ("features", "length", "label")


def compute_cache(
    features_fn: Callable, backbone_params: dict, eval_batches, mesh: Mesh
) -> dict[str, np.ndarray]:
    """{'features' float32 [M,N,D], 'length' int32 [M], 'label' int32 [M]} of this process's M valid examples.

    features_fn(backbone_params, batch) -> [B,N,D] (jitted); eval_batches: an eval iterator over the training
    split (each example once, padding examples with valid False, dropped here).
    """
    parts: dict[str, list[np.ndarray]] = {k: [] for k in CACHE_KEYS}
    for local in eval_batches:
        valid = np.asarray(local["valid"], bool)
        feats = local_rows(features_fn(backbone_params, global_batch(local, mesh)))
        parts["features"].append(feats[valid].astype(np.float32))
        parts["length"].append(np.asarray(local["length"])[valid])
        parts["label"].append(np.asarray(local["label"])[valid])
    return {k: np.concatenate(v) for k, v in parts.items()}


def cache_batches(
    cache: dict[str, np.ndarray], batch_size: int, seed: int
) -> Iterator[dict[str, np.ndarray]]:
    """Endless batches of `batch_size` rows of the cache, in a fresh random order every epoch (an epoch's
    remainder starts the next batch)."""
    rng = np.random.default_rng(seed)
    n = len(cache["label"])
    order = np.zeros(0, np.int64)
    while True:
        while len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(n)])
        index, order = order[:batch_size], order[batch_size:]
        yield {k: v[index] for k, v in cache.items()}
