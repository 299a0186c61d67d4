"""The `arrayrecord:GLOB` source: ArrayRecord shards written by scripts/prepare_data.py.

GLOB may contain '{split}', replaced by the split name (e.g. 'arrayrecord:/data/in1k/{split}-*.array_record');
without it every split reads the same files. Each record is `encode_record(image_bytes, label, name)`:
int32 label, uint16 name length, UTF-8 name, then the encoded image. The shards' folder holds
`dataset.json` with the class names.
"""

import glob
import json
import os
import struct

from naraim.data.sources.base import Example
from naraim.errors import UserError

METADATA_FILE = "dataset.json"
_HEADER = struct.Struct("<iH")


def encode_record(image: bytes, label: int, name: str) -> bytes:
    """One record: label int32, name length uint16, name, encoded image bytes."""
    name_bytes = name.encode("utf-8")[:65535]
    return _HEADER.pack(int(label), len(name_bytes)) + name_bytes + image


def decode_record(record: bytes) -> tuple[bytes, int, str]:
    """Inverse of encode_record: (image bytes, label, name)."""
    label, n = _HEADER.unpack_from(record)
    start = _HEADER.size
    return record[start + n :], label, record[start : start + n].decode("utf-8", "replace")


class ArrayRecordSource:
    """source[i] = (encoded image bytes, label, name) from the shards matching the glob."""

    def __init__(self, pattern: str, split: str):
        from array_record.python.array_record_data_source import ArrayRecordDataSource

        self.pattern = pattern.replace("{split}", split)
        self.split = split
        paths = sorted(glob.glob(self.pattern))
        if not paths:
            raise UserError(
                f"no ArrayRecord files match {self.pattern!r}; run scripts/prepare_data.py or fix the glob"
            )
        self._ds = ArrayRecordDataSource(paths)
        meta_path = os.path.join(os.path.dirname(paths[0]), METADATA_FILE)
        if os.path.exists(meta_path):
            with open(meta_path) as f:
                self.num_classes = len(json.load(f)["classes"])
        else:  # files not written by prepare_data.py: scan the labels once
            self.num_classes = 1 + max(decode_record(self._ds[i])[1] for i in range(len(self._ds)))

    def __repr__(self) -> str:
        return f"ArrayRecord files {self.pattern!r}"

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> Example:
        return decode_record(self._ds[index])
