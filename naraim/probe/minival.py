"""The minival split: a seeded part of the training split that selects among a sweep's heads, so that the
validation split is only ever reported, never selected on."""

import numpy as np


def split_minival(num_examples: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, minival indices), each sorted int64: round(fraction * n) of range(n), drawn by a
    permutation seeded by `seed`, are minival (at least one when fraction > 0 and n > 1); the rest train."""
    if fraction <= 0 or num_examples < 2:
        return np.arange(num_examples), np.zeros(0, np.int64)
    count = min(num_examples - 1, max(1, round(fraction * num_examples)))
    order = np.random.default_rng([seed, 0x6D696E69]).permutation(num_examples)
    return np.sort(order[count:]), np.sort(order[:count])
