"""The `synthetic` source: images generated on the fly (see naraim.data.synthetic)."""

from naraim.data import synthetic
from naraim.data.sources.base import Example
from naraim.errors import UserError


class SyntheticSource:
    """`sizes[split]` synthetic examples of `split`; example i depends only on (seed 0, split, i)."""

    def __init__(self, split: str, *, num_classes: int, min_side: int, max_side: int, sizes: dict[str, int]):
        split = "validation" if split == "val" else split
        if split not in sizes:
            raise UserError(f"synthetic data has no split {split!r}; use one of {', '.join(sizes)}")
        if num_classes > len(synthetic.CLASS_NAMES):
            raise UserError(
                f"data.synthetic.num_classes={num_classes} exceeds the {len(synthetic.CLASS_NAMES)} "
                "synthetic classes; use at most that many"
            )
        self.split = split
        self.num_classes = num_classes
        self.min_side, self.max_side = min_side, max_side
        self._size = int(sizes[split])

    def __repr__(self) -> str:
        return f"synthetic data (split {self.split!r})"

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: int) -> Example:
        image, label = synthetic.generate(
            0,
            self.split,
            int(index),
            num_classes=self.num_classes,
            min_side=self.min_side,
            max_side=self.max_side,
        )
        return image, label, f"synthetic/{self.split}/{index}", None
