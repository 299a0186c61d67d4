"""Convert a folder or TFDS split into ArrayRecord shards of encoded images + labels (for `arrayrecord:`).

Images may be pre-resized with their aspect ratio kept, so that their area is at most `max_area` pixels
(e.g. 2 * 224 * 224): training then decodes small JPEGs. Undecodable files are skipped with a warning.
"""

import io
import json
import logging
import math
import multiprocessing
import os

import ml_collections
from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image

from naraim.console import progress
from naraim.data.config import default_data_config
from naraim.data.decode import decode_image, oriented_size
from naraim.data.sources import open_source
from naraim.data.sources.arrayrecord import METADATA_FILE, RECORD_FORMAT, encode_record
from naraim.errors import UserError

log = logging.getLogger("naraim.data")


def shrink_to_area(image: Image.Image, max_area: int) -> Image.Image:
    """The image scaled down (aspect kept) to at most max_area pixels; unchanged if already smaller."""
    w, h = image.size
    if w * h <= max_area:
        return image
    f = math.sqrt(max_area / (w * h))
    return image.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BICUBIC, reducing_gap=3.0)


_SOURCE = None  # the split's source in a worker process, set once by _set_source


def _set_source(source) -> None:
    global _SOURCE
    _SOURCE = source


def _convert(args: tuple) -> bytes | None:
    """One example -> record bytes (with the original's width / height), or None if it does not decode."""
    index, max_area, quality = args
    source = _SOURCE
    name = f"example {index}"
    try:
        raw, label, name, aspect_ratio = source[index]
        image = Image.fromarray(raw) if not isinstance(raw, bytes) else decode_image(raw, min_area=max_area)
        if aspect_ratio is None:  # of the original image, not of its draft decode or pre-resized copy
            w, h = oriented_size(raw) if isinstance(raw, bytes) else image.size
            aspect_ratio = w / h
        if isinstance(raw, bytes) and not max_area:
            return encode_record(raw, label, name, aspect_ratio)
        buf = io.BytesIO()
        shrink_to_area(image, max_area or image.size[0] * image.size[1]).save(buf, "JPEG", quality=quality)
        return encode_record(buf.getvalue(), label, name, aspect_ratio)
    except Exception as e:  # any unreadable example is skipped and named, never a crash
        log.warning("skipping unusable image %s (%s: %s)", name, type(e).__name__, e)
        return None


def write_arrayrecord(
    source_spec: str,
    splits: list[str],
    out_dir: str,
    *,
    num_shards: int = 4,
    max_area: int = 0,
    quality: int = 90,
    workers: int = 1,
    data_cfg: ml_collections.ConfigDict | None = None,
) -> dict[str, int]:
    """Writes OUT_DIR/<split>-0000i-of-0000n.array_record and OUT_DIR/dataset.json; returns counts per split.

    source_spec: 'folder:PATH' or 'tfds:NAME' (or 'synthetic'); max_area 0 keeps the original bytes.
    Progress (images done, elapsed, ETA) goes to stderr, off a terminal at most every 10 s.
    """
    cfg = data_cfg.copy_and_resolve_references() if data_cfg is not None else default_data_config()
    cfg.source = source_spec
    os.makedirs(out_dir, exist_ok=True)
    counts, classes = {}, None
    for split in splits:
        source = open_source(cfg, split)
        if classes is None:
            classes = list(getattr(source, "classes", None) or [str(i) for i in range(source.num_classes)])
        n = len(source)
        shards = max(1, min(num_shards, n))
        jobs = ((i, max_area, quality) for i in range(n))
        written = 0
        # spawned workers: forking a process that runs JAX's threads can deadlock; the source (a million
        # paths on ImageNet) goes to each worker once, not with every job
        _set_source(source)
        spawn = multiprocessing.get_context("spawn")
        bar = progress(n, f"preparing {split}", "image", min_interval=10.0)
        with spawn.Pool(workers, _set_source, (source,)) if workers > 1 else _Serial() as pool:
            records = pool.imap(_convert, jobs, chunksize=16)
            for s in range(shards):
                path = os.path.join(out_dir, f"{split}-{s:05d}-of-{shards:05d}.array_record")
                writer = ArrayRecordWriter(path, "group_size:1")
                for i in range(s * n // shards, (s + 1) * n // shards):
                    record = next(records)
                    if record is not None:
                        writer.write(record)
                        written += 1
                    bar.update(i + 1)
                writer.close()
        bar.close()
        if written == 0:
            raise UserError(f"split {split!r} of {source_spec!r} holds no usable image; check the source")
        counts[split] = written
    with open(os.path.join(out_dir, METADATA_FILE), "w") as f:
        meta = {
            "source": source_spec,
            "classes": classes,
            "num_examples": counts,
            "max_area": max_area,
            "record_format": RECORD_FORMAT,
        }
        json.dump(meta, f)
    return counts


class _Serial:
    """In-process stand-in for multiprocessing.Pool (imap only)."""

    def __enter__(self) -> "_Serial":
        return self

    def __exit__(self, *exc) -> None:
        return None

    @staticmethod
    def imap(fn, jobs, chunksize: int = 1):
        del chunksize
        return map(fn, jobs)
