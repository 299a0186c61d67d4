"""The `arrayrecord:GLOB` source: ArrayRecord shards written by scripts/prepare_data.py.

GLOB may contain '{split}', replaced by the split name (e.g. 'arrayrecord:/data/in1k/{split}-*.array_record');
without it every split reads the same files. Each record is `encode_record(image_bytes, label, name,
aspect_ratio)`: int32 label, uint16 name length, float32 width/height of the original image (0: unknown),
UTF-8 name, then the encoded image. The shards' folder holds `dataset.json` with the class names and
"record_format": 2; shards without it (written before the aspect ratio was stored) have no float32 field.
"""

import glob
import json
import os
import struct

from array_record.python.array_record_data_source import ArrayRecordDataSource

from naraim.data.sources.base import Example
from naraim.errors import UserError

METADATA_FILE = "dataset.json"
RECORD_FORMAT = 2
_HEADER = struct.Struct("<iHf")
_HEADER_V1 = struct.Struct("<iH")


def encode_record(image: bytes, label: int, name: str, aspect_ratio: float | None = None) -> bytes:
    """One record: label int32, name length uint16, original width/height float32 (0: unknown), name, encoded
    image bytes."""
    name_bytes = name.encode("utf-8")[:65535]
    return _HEADER.pack(int(label), len(name_bytes), float(aspect_ratio or 0.0)) + name_bytes + image


def decode_record(record: bytes, record_format: int = RECORD_FORMAT) -> tuple[bytes, int, str, float | None]:
    """Inverse of encode_record: (image bytes, label, name, aspect_ratio or None). struct.error for a record
    shorter than its header."""
    if record_format == 1:
        (label, n), aspect, start = _HEADER_V1.unpack_from(record), 0.0, _HEADER_V1.size
    else:
        (label, n, aspect), start = _HEADER.unpack_from(record), _HEADER.size
    if len(record) < start + n:
        raise struct.error(f"record of {len(record)} bytes is shorter than its {start + n}-byte header")
    name = record[start : start + n].decode("utf-8", "replace")
    return record[start + n :], label, name, float(aspect) if aspect > 0 else None


class ArrayRecordSource:
    """source[i] = (encoded image bytes, label, name) from the shards matching the glob."""

    def __init__(self, pattern: str, split: str):
        self.pattern = pattern.replace("{split}", split)
        self.split = split
        paths = sorted(glob.glob(self.pattern))
        if not paths:
            raise UserError(
                f"no ArrayRecord files match {self.pattern!r}; run scripts/prepare_data.py or fix the glob"
            )
        self._ds = ArrayRecordDataSource(paths)
        meta_path = os.path.join(os.path.dirname(paths[0]), METADATA_FILE)
        meta = {}
        if os.path.exists(meta_path):
            try:
                with open(meta_path) as f:
                    meta = json.load(f)
            except (OSError, ValueError) as e:
                raise UserError(
                    f"{meta_path} is not readable JSON ({e}); re-run scripts/prepare_data.py"
                ) from None
        self.record_format = int(meta.get("record_format", 1))
        if "classes" in meta:
            self.num_classes = len(meta["classes"])
        else:  # files not written by prepare_data.py: scan the labels once
            labels = []
            for i in range(len(self._ds)):
                try:
                    labels.append(decode_record(self._ds[i], self.record_format)[1])
                except struct.error:
                    continue
            self.num_classes = 1 + max(labels, default=-1)

    def __repr__(self) -> str:
        return f"ArrayRecord files {self.pattern!r}"

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> Example:
        return decode_record(self._ds[index], self.record_format)
