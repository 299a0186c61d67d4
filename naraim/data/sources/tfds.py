"""The `tfds:NAME` source: a prepared TFDS dataset read through `tfds.data_source` (ArrayRecord files).

Images are read as encoded bytes (TFDS decoding skipped) and decoded by naraim.data.decode; the features
are 'image' and 'label' (ClassLabel), as in imagenet2012.
"""

from naraim.absl_quiet import absl_warnings_silenced
from naraim.data.sources.base import Example
from naraim.errors import UserError


class TfdsSource:
    """source[i] = (encoded image bytes, label, 'NAME/split/i')."""

    def __init__(self, name: str, split: str, *, data_dir: str | None = None):
        import tensorflow_datasets as tfds  # heavy to import: only when a tfds: source is opened

        self.name, self.split = name, split
        try:
            with absl_warnings_silenced():  # TFDS warns before raising for an unprepared dataset
                self._ds = tfds.data_source(
                    name,
                    split=split,
                    data_dir=data_dir,
                    download=False,
                    decoders={"image": tfds.decode.SkipDecoding()},
                )
        except Exception as e:  # tfds raises several types for a missing or unprepared dataset
            where = data_dir or "the TFDS data dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
            raise UserError(
                f"TFDS dataset {name!r} split {split!r} is not prepared in {where} ({type(e).__name__}); "
                "prepare it as in the README's 'Data sources' or set data.tfds_data_dir"
            ) from None
        features = self._ds.dataset_info.features
        self._has_label = "label" in features
        self.classes = list(features["label"].names) if self._has_label else []
        self.num_classes = len(self.classes)

    def __repr__(self) -> str:
        return f"TFDS dataset {self.name!r} (split {self.split!r})"

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int) -> Example:
        record = self._ds[index]
        label = int(record["label"]) if self._has_label else -1
        return record["image"], label, f"{self.name}/{self.split}/{index}", None
