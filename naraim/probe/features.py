"""Which backbone features a frozen probe reads: feature specs, parsed from `probe.blocks`.

A spec is a block index (the block's output, before the final LayerNorm), MEAN (the mean of the last
`last_k` blocks' outputs, AIM's default input) or a range (first, last) of blocks whose outputs are averaged
(written 'first-last', e.g. AIM's '14-19'). The backbone is run once per batch; the blocks the specs
need are stacked into [B, nb, N, D] (what the attentive probe's feature cache stores), or mean-pooled over
the real tokens into [B, nb, D] (the linear probe's and kNN's), and each spec is read off that stack.

Feature caching for frozen protocols: the backbone's block outputs (or kNN's pooled features) for every
training example, computed once.

Only valid when the training transforms have no randomness (every epoch would see the same inputs); the
heads then train on shuffled batches of the cache. Memory on the host: examples x blocks x max_tokens x
width x 4 bytes for the attentive probe (e.g. 3,000 x 7 x 64 x 192 floats = 1 GB), examples x blocks x
width x 4 bytes for the linear probe and kNN, which read mean-pooled features (16 MB).
"""

from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from naraim.errors import UserError
from naraim.infra.mesh import global_batch
from naraim.probe.results import local_rows

MEAN = "mean"


Spec = int | str | tuple[int, int]


def _block_range(part: str, spec: str, depth: int, key: str) -> tuple[int, int]:
    first, last = (int(x) for x in part.split("-"))
    if not 0 <= first <= last < depth:
        raise UserError(
            f"{key}={spec!r}: the range {part!r} needs 0 <= first <= last < {depth} (the backbone's blocks)"
        )
    return first, last


def parse_blocks(spec: str, depth: int, key: str = "probe.blocks") -> tuple[Spec, ...]:
    """'mean' | 'all' | comma-separated block indices (negative from the end), block ranges 'first-last'
    (the mean of those blocks' outputs) and/or 'all' / 'mean' -> the feature specs in the order given
    (duplicates dropped): indices in [0, depth), (first, last) pairs and/or MEAN."""
    specs: list[Spec] = []
    for part in (p.strip() for p in str(spec).split(",")):
        if part == MEAN:
            items: list[Spec] = [MEAN]
        elif part == "all":
            items = list(range(depth))
        elif part.count("-") == 1 and not part.startswith("-") and all(x.isdigit() for x in part.split("-")):
            items = [_block_range(part, spec, depth, key)]
        else:
            try:
                index = int(part)
            except ValueError:
                raise UserError(
                    f"{key}={spec!r}: {part!r} is not a block index, a range 'first-last', 'all' or "
                    "'mean'; e.g. 'all,mean', '0,-1' or '14-19'"
                ) from None
            if not -depth <= index < depth:
                raise UserError(
                    f"{key}={spec!r}: block {index} is outside the backbone's {depth} blocks "
                    f"(use 0..{depth - 1}, or -1 for the last)"
                )
            items = [index % depth]
        specs.extend(item for item in items if item not in specs)
    if not specs:
        raise UserError(f"{key}={spec!r} names no features: use e.g. 'mean', 'all' or '-1'")
    return tuple(specs)


def spec_name(spec: Spec, last_k: int) -> int | str:
    """How results name a spec: the block index, 'mean_last_<k>' or 'mean_<first>-<last>'."""
    if isinstance(spec, tuple):
        return f"mean_{spec[0]}-{spec[1]}"
    return f"mean_last_{last_k}" if spec == MEAN else int(spec)


def _spec_blocks(spec: Spec, depth: int, last_k: int) -> range:
    """The blocks a spec averages (one for a block index)."""
    if isinstance(spec, tuple):
        return range(spec[0], spec[1] + 1)
    if spec == MEAN:
        return range(depth - max(1, min(last_k, depth)), depth)
    return range(spec, spec + 1)


def needed_blocks(specs: tuple[Spec, ...], depth: int, last_k: int) -> tuple[int, ...]:
    """The sorted block indices the specs read (MEAN reads the last min(last_k, depth) blocks)."""
    return tuple(sorted({b for s in specs for b in _spec_blocks(s, depth, last_k)}))


def block_stack(intermediates: dict[str, jax.Array], blocks: tuple[int, ...]) -> jax.Array:
    """float32 [B, nb, N, D]: the outputs of `blocks`, from the backbone's intermediates ('block_<i>')."""
    return jnp.stack([intermediates[f"block_{i}"].astype(jnp.float32) for i in blocks], axis=1)


def real_token_mask(length: jax.Array, num_tokens: int) -> jax.Array:
    """bool [B,N]: True where the token index < length."""
    return jnp.arange(num_tokens)[None, :] < length[:, None]


def mean_pool(stack: jax.Array, length: jax.Array) -> jax.Array:
    """stack [B, nb, N, D] (block outputs), length [B] -> float32 [B, nb, D]: the mean over real tokens."""
    real = real_token_mask(length, stack.shape[2]).astype(jnp.float32)
    pooled = jnp.einsum("bknd,bn->bkd", stack.astype(jnp.float32), real)
    return pooled / jnp.maximum(real.sum(-1), 1.0)[:, None, None]


def spec_features(
    stack: jax.Array, specs: tuple[Spec, ...], blocks: tuple[int, ...], depth: int, last_k: int
) -> jax.Array:
    """[F, B, ...]: each spec's features read off a block stack [B, nb, ...] of `blocks` (tokens [N, D] or
    mean-pooled [D]: the mean over blocks commutes with the mean over tokens)."""
    out = []
    for spec in specs:
        if isinstance(spec, int):
            out.append(stack[:, blocks.index(spec)])
        else:
            rows = [blocks.index(i) for i in _spec_blocks(spec, depth, last_k)]
            out.append(jnp.mean(stack[:, rows], axis=1))
    return jnp.stack(out)


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
