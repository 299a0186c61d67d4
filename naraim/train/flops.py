"""Model FLOP counting and a measured matmul peak, for MFU.

Convention: training FLOPs per step = 6 * params * tokens + attention, with tokens = batch * N (every padded
position is computed) and attention = 12 * depth * N^2 * width per example (QK^T and AV, 2 FLOPs per
multiply-add, forward + 2x backward; the causal mask is not discounted).
"""

import time

import jax
import jax.numpy as jnp


def train_flops_per_step(num_params: int, batch: int, tokens: int, depth: int, width: int) -> float:
    """Model FLOPs of one training step (see module docstring)."""
    return 6.0 * num_params * batch * tokens + 12.0 * depth * tokens**2 * width * batch


def matmul_peak_flops(dtype=jnp.float32, size: int | None = None, repeats: int = 10) -> float:
    """Best measured FLOP/s of an n x n @ n x n matmul on the default device (n = 2048 on CPU, 8192 else)."""
    n = size or (2048 if jax.default_backend() == "cpu" else 8192)
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best
