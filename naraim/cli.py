"""Shared entry-point plumbing for the scripts: user errors end with one line and exit status 1."""

import sys
from collections.abc import Callable

from naraim.errors import UserError


def run_main(main: Callable[[], None]) -> None:
    """Runs `main`; a UserError prints `error: <message>` to stderr and exits with status 1."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
