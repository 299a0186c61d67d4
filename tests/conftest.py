"""Tests compare float32 results at ~1e-5, so float32 matmuls run at full precision on every backend (on a
GPU the default would be TF32; on the CPU this changes nothing).

Many tests compile the same tiny programs, in-process and in the scripts they start, so a test session
keeps JAX's persistent compilation cache in one temporary folder that its subprocesses and pytest-xdist
workers inherit (JAX_COMPILATION_CACHE_DIR; a folder set by the user is kept). A cached program is the one
XLA compiled, so results stay bit for bit. The size limit turns on the cache's file lock, which processes
compiling the same program at once need (the two-process test)."""

import atexit
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="naraim-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))

import jax  # noqa: E402  (reads the cache settings above when imported)

jax.config.update("jax_default_matmul_precision", "highest")
