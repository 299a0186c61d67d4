"""The interface every source implements."""

from typing import Protocol

import numpy as np

# (encoded bytes or RGB uint8 [H, W, 3], label, name, width/height of the original image if the source knows
# it (pre-resized shards), else None: the decoded image's own aspect ratio is used)
Example = tuple[bytes | np.ndarray, int, str, float | None]


class UnusableExample(Exception):
    """source[i] cannot give example i (a huge file, a non-image); `name` identifies it in the warning."""

    def __init__(self, name: str, reason: str):
        super().__init__(reason)
        self.name = name


class Source(Protocol):
    """Random access to a split's examples; repr names the source in error messages."""

    num_classes: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Example: ...
