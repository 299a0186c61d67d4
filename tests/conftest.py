"""Tests compare float32 results at ~1e-5, so float32 matmuls run at full precision on every backend (on a
GPU the default would be TF32; on the CPU this changes nothing)."""

import jax

jax.config.update("jax_default_matmul_precision", "highest")
