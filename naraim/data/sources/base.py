"""The interface every source implements."""

from typing import Protocol

import numpy as np

Example = tuple[bytes | np.ndarray, int, str]  # (encoded bytes or RGB uint8 [H, W, 3], label, name)


class Source(Protocol):
    """Random access to a split's examples; repr names the source in error messages."""

    num_classes: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Example: ...
