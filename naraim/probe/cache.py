"""Feature caching for frozen protocols: the backbone's block outputs (or kNN's pooled features) for every
training example, computed once.

Only valid when the training transforms have no randomness (every epoch would see the same inputs); the
heads then train on shuffled batches of the cache. Memory on the host: examples x blocks x max_tokens x
width x 4 bytes for the attentive probe (e.g. 3,000 x 7 x 64 x 192 floats = 1 GB), examples x blocks x
width x 4 bytes for the linear probe and kNN, which read mean-pooled features (16 MB).
"""

from collections.abc import Callable, Iterator

import numpy as np
from jax.sharding import Mesh

from naraim.infra.mesh import global_batch
from naraim.probe.accuracy import local_rows

CACHE_KEYS = ("features", "length", "label", "aspect_ratio")


def compute_cache(
    features_fn: Callable, backbone_params: dict, eval_batches, mesh: Mesh, progress: Callable | None = None
) -> dict[str, np.ndarray]:
    """{'features' float32 [M, ...], 'length' int32 [M], 'label' int32 [M], 'aspect_ratio' [M]} of this
    process's M valid examples, in the iterator's order.

    features_fn(backbone_params, batch) -> [B, ...] (jitted; the sweep's block stack [B, nb, N, D] or
    [B, nb, D], kNN's pooled features [B, F, D]); eval_batches: an eval iterator (each example once,
    padding examples with valid False, dropped here); progress(done_batches) is called per batch.
    """
    parts: dict[str, list[np.ndarray]] = {k: [] for k in CACHE_KEYS}
    for i, local in enumerate(eval_batches):
        valid = np.asarray(local["valid"], bool)
        feats = local_rows(features_fn(backbone_params, global_batch(local, mesh)))
        parts["features"].append(feats[valid].astype(np.float32))
        for key in CACHE_KEYS[1:]:
            parts[key].append(np.asarray(local[key])[valid])
        if progress is not None:
            progress(i + 1)
    return {k: np.concatenate(v) for k, v in parts.items()}


class CacheBatches(Iterator):
    """Endless batches of `batch_size` rows of the cache in a fresh seeded order every epoch (an epoch's
    remainder starts the next batch). get_state() / set_state() resume at the same next batch."""

    def __init__(self, cache: dict[str, np.ndarray], batch_size: int, seed: int):
        self._cache, self._batch, self._seed = cache, batch_size, seed
        self._n = len(cache["label"])
        self._position = 0
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self._seed, epoch]).permutation(self._n)}
        return self._orders[epoch]

    def __next__(self) -> dict[str, np.ndarray]:
        positions = range(self._position, self._position + self._batch)
        index = np.asarray([self._order(p // self._n)[p % self._n] for p in positions])
        self._position += self._batch
        return {k: v[index] for k, v in self._cache.items() if k != "aspect_ratio"}

    def get_state(self) -> dict:
        return {"position": self._position}

    def set_state(self, state: dict) -> None:
        self._position = int(state["position"])
