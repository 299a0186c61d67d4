"""Random-access example sources selected by `data.source`.

Every source has `len(source)`, `source.num_classes` and `source[i] -> (raw, label, name, aspect_ratio)`
where raw is encoded image bytes or an RGB uint8 array [H, W, 3], label an int (-1 if none), name identifies
the example in warnings (a file path, or a record key) and aspect_ratio is the original image's width /
height when the source stores it (pre-resized ArrayRecord shards), else None.
"""

import functools
import os

import ml_collections

from naraim.data.config import source_kind, synthetic_sides
from naraim.data.sources.arrayrecord import ArrayRecordSource
from naraim.data.sources.base import Source
from naraim.data.sources.folder import FolderSource
from naraim.data.sources.synthetic import SyntheticSource
from naraim.data.sources.tfds import TfdsSource


def open_source(data_cfg: ml_collections.ConfigDict, split: str) -> Source:
    """The source of `split` ('train', 'validation', ...) named by data_cfg.source; UserError if missing.
    A run opens each split once: later calls with the same settings return the same source (a folder is
    listed again only when its top folder changed)."""
    kind, arg = source_kind(data_cfg.source)
    syn = data_cfg.synthetic
    return _open(
        kind,
        arg,
        split,
        synthetic_sides(data_cfg),
        (int(syn.num_classes), int(syn.train_size), int(syn.validation_size), int(syn.test_size)),
        (float(data_cfg.holdout_fraction), int(data_cfg.holdout_seed), int(data_cfg.max_file_bytes)),
        data_cfg.tfds_data_dir or None,
        os.stat(arg).st_mtime_ns if kind == "folder" and os.path.isdir(arg) else 0,
    )


@functools.lru_cache(maxsize=16)
def _open(kind, arg, split, sides, synthetic, folder, tfds_data_dir, _changed) -> Source:
    if kind == "synthetic":
        num_classes, train, validation, test = synthetic
        return SyntheticSource(
            split,
            num_classes=num_classes,
            min_side=sides[0],
            max_side=sides[1],
            sizes={"train": train, "validation": validation, "test": test},
        )
    if kind == "folder":
        holdout_fraction, holdout_seed, max_file_bytes = folder
        return FolderSource(
            arg,
            split,
            holdout_fraction=holdout_fraction,
            holdout_seed=holdout_seed,
            max_file_bytes=max_file_bytes,
        )
    if kind == "tfds":
        return TfdsSource(arg, split, data_dir=tfds_data_dir)
    return ArrayRecordSource(arg, split)


__all__ = ["Source", "open_source"]
