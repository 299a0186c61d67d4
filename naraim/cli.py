"""Shared entry-point plumbing for the scripts: user errors end with one line and exit status 1, and on
the CPU backend the host allocator keeps XLA's per-step buffers (naraim/host_memory.py)."""

import argparse
import sys
from collections.abc import Callable

from naraim.errors import UserError
from naraim.host_memory import keep_freed_host_memory
from naraim.stop_signals import stop_signals


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a bad argument as a UserError: one line and exit status 1 under run_main (--help is
    argparse's, exit status 0)."""

    def error(self, message: str):
        raise UserError(f"{message} (see --help)")


def run_main(main: Callable[[], None]) -> None:
    """Runs `main`; a UserError prints `error: <message>` to stderr and exits with its exit_code (1, or 130
    for an interrupted run). Ctrl-C and SIGTERM end it with one line and exit status 130.

    Call it before anything initialises a JAX backend (the allocator setting needs that).
    """
    keep_freed_host_memory()
    try:
        with stop_signals():
            main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # outside a training loop (loading, compiling): nothing to save
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
