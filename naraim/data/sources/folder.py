"""The `folder:PATH` source: the ImageFolder convention.

Either PATH/<split>/<class>/<files> (splits train, validation or val, test) or PATH/<class>/<files>, where a
seeded fraction of each class is held out as the validation split. Class ids follow the sorted class folder
names (of the train split). Every non-hidden file is listed; files that do not decode are skipped later.
"""

import os

import numpy as np

from naraim.data.sources.base import Example
from naraim.errors import UserError

SPLIT_DIRS = ("train", "validation", "val", "test")
_ALIASES = {"validation": ("validation", "val"), "val": ("val", "validation")}


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a looping link
        return False


def _subdirs(path: str) -> list[str]:
    with os.scandir(path) as entries:
        return sorted(e.name for e in entries if _is_dir(e) and not e.name.startswith("."))


def list_files(path: str, seen: set | None = None) -> list[str]:
    """Non-hidden regular files under `path` (recursively, following symbolic links to folders but never
    into a folder twice, so a link loop ends), sorted; pipes, sockets and devices are left out so that
    reading an example can never block."""
    seen = set() if seen is None else seen
    try:
        st = os.stat(path)
    except OSError:  # a looping or dangling link
        return []
    if (st.st_dev, st.st_ino) in seen:
        return []
    seen.add((st.st_dev, st.st_ino))
    out, dirs = [], []
    with os.scandir(path) as entries:
        for e in entries:
            if e.name.startswith("."):
                continue
            if _is_dir(e):
                dirs.append(e.path)
            elif e.is_file():
                out.append(e.path)
    out.sort()
    for d in sorted(dirs):
        out.extend(list_files(d, seen))
    return out


class FolderSource:
    """Encoded files of one split of an image folder; source[i] = (file bytes, class id, path)."""

    def __init__(self, root: str, split: str, *, holdout_fraction: float = 0.1, holdout_seed: int = 0):
        if not os.path.isdir(root):
            raise UserError(f"image folder {root!r} does not exist; fix the path in data.source")
        self.root, self.split = root, split
        top = _subdirs(root)
        if any(d in SPLIT_DIRS for d in top):
            self.classes, self._items = self._split_folders(root, split, top)
        else:
            self.classes, self._items = self._held_out(root, split, top, holdout_fraction, holdout_seed)
        if not self._items:
            raise UserError(
                f"image folder {root!r} has no files for split {split!r}; add images or fix the path"
            )
        self.num_classes = len(self.classes)

    @staticmethod
    def _split_folders(root: str, split: str, top: list[str]) -> tuple[list[str], list[tuple[str, int]]]:
        split_dir = next((d for d in _ALIASES.get(split, (split,)) if d in top), None)
        if split_dir is None:
            raise UserError(
                f"image folder {root!r} has no {split!r} split folder (found: {', '.join(top)}); "
                "set data.train_split / data.val_split to one of those"
            )
        class_root = os.path.join(root, "train" if "train" in top else split_dir)
        classes = _subdirs(class_root)
        ids = {c: i for i, c in enumerate(classes)}
        items = []
        for c in _subdirs(os.path.join(root, split_dir)):
            if c not in ids:
                raise UserError(
                    f"class folder {c!r} of split {split_dir!r} is not in {class_root!r}; add or rename it"
                )
            items.extend((f, ids[c]) for f in list_files(os.path.join(root, split_dir, c)))
        return classes, items

    @staticmethod
    def _held_out(
        root: str, split: str, classes: list[str], fraction: float, seed: int
    ) -> tuple[list[str], list[tuple[str, int]]]:
        if split not in ("train", "validation", "val"):
            raise UserError(
                f"image folder {root!r} has no split folders, only 'train' and 'validation' (held out); "
                f"split {split!r} does not exist"
            )
        items = []
        for i, c in enumerate(classes):
            files = list_files(os.path.join(root, c))
            order = np.random.default_rng([seed, i]).permutation(len(files))
            k = round(fraction * len(files)) if len(files) > 1 else 0
            chosen = order[:k] if split != "train" else order[k:]
            items.extend((files[j], i) for j in sorted(chosen))
        return classes, items

    def __repr__(self) -> str:
        return f"image folder {self.root!r} (split {self.split!r})"

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> Example:
        path, label = self._items[index]
        with open(path, "rb") as f:
            return f.read(), label, path, None
