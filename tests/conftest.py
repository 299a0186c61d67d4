"""Tests compare float32 results at ~1e-5, so float32 matmuls run at full precision on every backend (on a
GPU the default would be TF32; on the CPU this changes nothing).

Many tests compile the same programs (a demo run's training step, in-process and in the scripts they start),
so a test session keeps JAX's persistent compilation cache in one temporary folder that its pytest-xdist
workers and subprocesses inherit (JAX_COMPILATION_CACHE_DIR; a folder set by the user is kept). JAX's
defaults hold: only programs that took over a second to compile are written, and the cache has no size
limit, whose eviction would list and read every entry on each write. A cached program is the one XLA
compiled, so results stay bit for bit. One after the other on a 2-vCPU EPYC (2026-12-07, `-n 2`): the fast
subset took 222 s with the cache and 248 s without; the six heaviest files 564 s and 756 s.
An entry is written in place, so a script a test SIGKILLs runs with script_runner.killable_env(), which
writes none."""

import atexit
import os
import shutil
import tempfile

import jax

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="naraim-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, True)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_default_matmul_precision", "highest")
