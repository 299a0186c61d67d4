"""Keeps XLA:CPU's per-step temporaries mapped between steps (glibc's malloc, CPU backend only).

XLA:CPU allocates each execution's temporaries as one block (554 MB for the S6/14 step at batch 8) and
frees it when the step ends. glibc serves a block that large with mmap, from any thread but the main one
always, and unmaps it on free: every step the kernel maps and zeroes the block again, about 140k page
faults and 0.45 s of system CPU per step on a 2-core machine. With a single arena, no mmap and no trimming
the freed block stays in the heap and the next step reuses it. The price is that the process keeps its
peak host memory until it exits.
"""

import ctypes
import importlib.metadata
import importlib.util

import jax

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))  # -1: never trim


def runs_on_cpu_only() -> bool:
    """True if JAX will pick the CPU: JAX_PLATFORMS says 'cpu', or no accelerator plugin is installed.

    Decided without initialising a backend (initialising starts the threads this setting is for).
    """
    platforms = jax.config.jax_platforms
    if platforms:
        return platforms == "cpu"
    plugins = importlib.metadata.entry_points(group="jax_plugins")
    return not plugins and importlib.util.find_spec("libtpu") is None


def keep_freed_host_memory() -> bool:
    """Sets glibc's malloc to keep freed memory (see the module docstring) if JAX will run on the CPU.

    Must run before JAX's CPU client starts its threads: threads that already allocated keep their arena.
    Returns True if the setting was applied (False on another backend or without glibc's mallopt).
    """
    if not runs_on_cpu_only():
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return all(mallopt(option, value) == 1 for option, value in _SETTINGS)
