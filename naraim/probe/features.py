"""Which backbone features a frozen probe reads: feature specs, parsed from `probe.blocks`.

A spec is a block index (the block's output, before the final LayerNorm) or MEAN (the mean of the last
`last_k` blocks' outputs, AIM's default input). The backbone is run once per batch; the blocks the specs
need are stacked into [B, nb, N, D] (what the attentive probe's feature cache stores), or mean-pooled over
the real tokens into [B, nb, D] (the linear probe's and kNN's), and each spec is read off that stack.
"""

import jax
import jax.numpy as jnp

from naraim.errors import UserError
from naraim.model.probe_head import real_token_mask

MEAN = "mean"


def parse_blocks(spec: str, depth: int) -> tuple[int | str, ...]:
    """'mean' | 'all' | comma-separated block indices (negative from the end) and/or 'all' / 'mean' ->
    the feature specs in the order given (duplicates dropped): indices in [0, depth) and/or MEAN."""
    specs: list[int | str] = []
    for part in (p.strip() for p in str(spec).split(",")):
        if part == MEAN:
            items: list[int | str] = [MEAN]
        elif part == "all":
            items = list(range(depth))
        else:
            try:
                index = int(part)
            except ValueError:
                raise UserError(
                    f"probe.blocks={spec!r}: {part!r} is not a block index, 'all' or 'mean'; e.g. 'all,mean' "
                    "or '0,-1'"
                ) from None
            if not -depth <= index < depth:
                raise UserError(
                    f"probe.blocks={spec!r}: block {index} is outside the backbone's {depth} blocks "
                    f"(use 0..{depth - 1}, or -1 for the last)"
                )
            items = [index % depth]
        specs.extend(item for item in items if item not in specs)
    if not specs:
        raise UserError(f"probe.blocks={spec!r} names no features: use e.g. 'mean', 'all' or '-1'")
    return tuple(specs)


def spec_name(spec: int | str, last_k: int) -> int | str:
    """How results name a spec: the block index, or 'mean_last_<k>'."""
    return f"mean_last_{last_k}" if spec == MEAN else int(spec)


def needed_blocks(specs: tuple[int | str, ...], depth: int, last_k: int) -> tuple[int, ...]:
    """The sorted block indices the specs read (MEAN reads the last min(last_k, depth) blocks)."""
    blocks = {s for s in specs if s != MEAN}
    if MEAN in specs:
        blocks.update(range(depth - max(1, min(last_k, depth)), depth))
    return tuple(sorted(blocks))


def block_stack(intermediates: dict[str, jax.Array], blocks: tuple[int, ...]) -> jax.Array:
    """float32 [B, nb, N, D]: the outputs of `blocks`, from the backbone's intermediates ('block_<i>')."""
    return jnp.stack([intermediates[f"block_{i}"].astype(jnp.float32) for i in blocks], axis=1)


def mean_pool(stack: jax.Array, length: jax.Array) -> jax.Array:
    """stack [B, nb, N, D] (block outputs), length [B] -> float32 [B, nb, D]: the mean over real tokens."""
    real = real_token_mask(length, stack.shape[2]).astype(jnp.float32)
    pooled = jnp.einsum("bknd,bn->bkd", stack.astype(jnp.float32), real)
    return pooled / jnp.maximum(real.sum(-1), 1.0)[:, None, None]


def spec_features(
    stack: jax.Array, specs: tuple[int | str, ...], blocks: tuple[int, ...], depth: int, last_k: int
) -> jax.Array:
    """[F, B, ...]: each spec's features read off a block stack [B, nb, ...] of `blocks` (tokens [N, D] or
    mean-pooled [D]: the mean over blocks commutes with the mean over tokens)."""
    out = []
    for spec in specs:
        if spec == MEAN:
            k = max(1, min(last_k, depth))
            rows = [blocks.index(i) for i in range(depth - k, depth)]
            out.append(jnp.mean(stack[:, rows], axis=1))
        else:
            out.append(stack[:, blocks.index(spec)])
    return jnp.stack(out)
