"""Silencing the absl WARNING lines that orbax and TFDS print for conditions naraim reports itself."""

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def absl_warnings_silenced() -> Iterator[None]:
    """Within the block the 'absl' logger passes only ERROR and above; its level is restored after."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl_logger.setLevel(level)
