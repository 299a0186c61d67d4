"""Tests compare float32 results at ~1e-5, so float32 matmuls run at full precision on every backend (on a
GPU the default would be TF32; on the CPU this changes nothing).

The tests leave JAX's persistent compilation cache off: with it, every compiled program is written to disk,
and with a size limit (the only way to get the file lock that concurrent writers need) each write lists and
reads every entry before it, a cost that grows with the square of a session's thousands of programs.
One after the other on a 2-vCPU EPYC (2026-12-07, `-n 2`), the fast subset took 349 s with the cache off,
476 s with it caching only programs that compile in over a second, and 736 s caching all (4,018 entries)."""

import jax

jax.config.update("jax_default_matmul_precision", "highest")
