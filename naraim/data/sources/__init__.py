"""Random-access example sources selected by `data.source`.

Every source has `len(source)`, `source.num_classes` and `source[i] -> (raw, label, name, aspect_ratio)`
where raw is encoded image bytes or an RGB uint8 array [H, W, 3], label an int (-1 if none), name identifies
the example in warnings (a file path, or a record key) and aspect_ratio is the original image's width /
height when the source stores it (pre-resized ArrayRecord shards), else None.
"""

import ml_collections

from naraim.data.config import source_kind, synthetic_sides
from naraim.data.sources.arrayrecord import ArrayRecordSource
from naraim.data.sources.base import Source
from naraim.data.sources.folder import FolderSource
from naraim.data.sources.synthetic import SyntheticSource
from naraim.data.sources.tfds import TfdsSource


def open_source(data_cfg: ml_collections.ConfigDict, split: str) -> Source:
    """The source of `split` ('train', 'validation', ...) named by data_cfg.source; UserError if missing."""
    kind, arg = source_kind(data_cfg.source)
    if kind == "synthetic":
        syn = data_cfg.synthetic
        min_side, max_side = synthetic_sides(data_cfg)
        return SyntheticSource(
            split,
            num_classes=int(syn.num_classes),
            min_side=min_side,
            max_side=max_side,
            sizes={"train": syn.train_size, "validation": syn.validation_size, "test": syn.test_size},
        )
    if kind == "folder":
        return FolderSource(
            arg,
            split,
            holdout_fraction=float(data_cfg.holdout_fraction),
            holdout_seed=int(data_cfg.holdout_seed),
            max_file_bytes=int(data_cfg.max_file_bytes),
        )
    if kind == "tfds":
        return TfdsSource(arg, split, data_dir=data_cfg.tfds_data_dir or None)
    return ArrayRecordSource(arg, split)


__all__ = ["Source", "open_source"]
