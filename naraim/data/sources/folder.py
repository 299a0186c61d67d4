"""The `folder:PATH` source: the ImageFolder convention.

Either PATH/<split>/<class>/<files> (splits train, validation or val, test) or PATH/<class>/<files>, where a
seeded fraction of each class is held out as the validation split. Class ids follow the sorted class folder
names (of the train split). Every non-hidden regular file is listed; entries that are not (looping or
dangling links, links to folders outside the class folder, pipes, sockets, devices) are skipped and counted,
one warning line per kind. A file is identified as an image from its header, and one over
`data.max_file_bytes` is skipped from its size, before the rest is read.
"""

import collections
import errno
import logging
import os
import stat

import numpy as np

from naraim.data.decode import identify_image
from naraim.data.sources.base import Example, UnusableExample
from naraim.errors import UserError

log = logging.getLogger("naraim.data")
SPLIT_DIRS = ("train", "validation", "val", "test")
_ALIASES = {"validation": ("validation", "val"), "val": ("val", "validation")}
_reported: set[tuple[str, str]] = set()  # (listed folder, kind) already warned about in this process


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a looping link
        return False


def _subdirs(path: str) -> list[str]:
    with os.scandir(path) as entries:
        return sorted(e.name for e in entries if _is_dir(e) and not e.name.startswith("."))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _entry_kind(entry: os.DirEntry) -> tuple[str, os.stat_result | None]:
    """('file' | 'folder' | the kind of entry that is skipped, its stat (links followed) or None)."""
    try:
        st = os.stat(entry.path)
    except OSError as e:
        if not entry.is_symlink():
            return "unreadable entries", None
        return ("looping links" if e.errno == errno.ELOOP else "dangling links"), None
    if stat.S_ISREG(st.st_mode):
        return "file", st
    if stat.S_ISDIR(st.st_mode):
        return "folder", st
    if stat.S_ISFIFO(st.st_mode):
        return "pipes (FIFOs)", st
    if stat.S_ISSOCK(st.st_mode):
        return "sockets", st
    return "device files", st


def list_files(path: str) -> tuple[list[str], collections.Counter]:
    """(non-hidden regular files under `path`, recursively and sorted folder by folder; the entries skipped,
    counted by kind).

    Links to files are followed; a link to a folder only when its target lies inside `path` and was not
    listed yet (so a link loop ends). Looping and dangling links, links to folders outside `path`, pipes,
    sockets and devices are skipped without being opened: listing never raises and reading never blocks.
    """
    top = os.path.realpath(path)
    files: list[str] = []
    skipped: collections.Counter = collections.Counter()
    seen: set[tuple[int, int]] = set()

    def walk(folder: str, st: os.stat_result) -> None:
        if (st.st_dev, st.st_ino) in seen:
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(folder) as it:
                entries = [e for e in it if not e.name.startswith(".")]
        except OSError:
            skipped["unreadable folders"] += 1
            return
        here, subfolders = [], []
        for e in entries:
            kind, est = _entry_kind(e)
            if kind == "file":
                here.append(e.path)
            elif kind == "folder":
                if e.is_symlink() and not _inside(os.path.realpath(e.path), top):
                    skipped["links to folders outside the class folder"] += 1
                else:
                    subfolders.append((e.path, est))
            else:
                skipped[kind] += 1
        files.extend(sorted(here))
        for sub, sub_st in sorted(subfolders):
            walk(sub, sub_st)

    try:
        walk(path, os.stat(path))
    except OSError:
        skipped["unreadable folders"] += 1
    return files, skipped


def read_file(path: str, max_bytes: int) -> bytes:
    """The bytes of the image file `path`: its size and header are checked first, so a huge file or a
    non-image is refused (UnusableExample) without reading the rest, and a pipe never blocks."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise UnusableExample(path, f"cannot open: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnusableExample(path, "not a regular file")
        if st.st_size > max_bytes:
            raise UnusableExample(
                path, f"{st.st_size:,} bytes exceed data.max_file_bytes={max_bytes:,} (not read)"
            )
        reason = identify_image(f)
        if reason:
            raise UnusableExample(path, reason)
        f.seek(0)
        # the file's size, not max_bytes: read(n) allocates n bytes before it reads
        return f.read(st.st_size)


class FolderSource:
    """Encoded files of one split of an image folder; source[i] = (file bytes, class id, path)."""

    def __init__(
        self,
        root: str,
        split: str,
        *,
        max_file_bytes: int,
        holdout_fraction: float = 0.1,
        holdout_seed: int = 0,
    ):
        if not os.path.isdir(root):
            raise UserError(f"image folder {root!r} does not exist; fix the path in data.source")
        self.root, self.split, self.max_file_bytes = root, split, int(max_file_bytes)
        self.skipped_entries: collections.Counter = collections.Counter()
        self._listed = root  # the folder whose class folders are listed
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
        for kind, count in sorted(self.skipped_entries.items()):
            if (self._listed, kind) not in _reported:  # held-out splits list the same folders: warn once
                _reported.add((self._listed, kind))
                log.warning("image folder %r: skipped %d %s", self._listed, count, kind)

    def _list(self, folder: str) -> list[str]:
        files, skipped = list_files(folder)
        self.skipped_entries.update(skipped)
        return files

    def _split_folders(
        self, root: str, split: str, top: list[str]
    ) -> tuple[list[str], list[tuple[str, int]]]:
        split_dir = next((d for d in _ALIASES.get(split, (split,)) if d in top), None)
        if split_dir is None:
            raise UserError(
                f"image folder {root!r} has no {split!r} split folder (found: {', '.join(top)}); "
                "set data.train_split / data.val_split to one of those"
            )
        self._listed = os.path.join(root, split_dir)
        class_root = os.path.join(root, "train" if "train" in top else split_dir)
        classes = _subdirs(class_root)
        ids = {c: i for i, c in enumerate(classes)}
        items = []
        for c in _subdirs(os.path.join(root, split_dir)):
            if c not in ids:
                raise UserError(
                    f"class folder {c!r} of split {split_dir!r} is not in {class_root!r}; add or rename it"
                )
            items.extend((f, ids[c]) for f in self._list(os.path.join(root, split_dir, c)))
        return classes, items

    def _held_out(
        self, root: str, split: str, classes: list[str], fraction: float, seed: int
    ) -> tuple[list[str], list[tuple[str, int]]]:
        if split not in ("train", "validation", "val"):
            raise UserError(
                f"image folder {root!r} has no split folders, only 'train' and 'validation' (held out); "
                f"split {split!r} does not exist"
            )
        items = []
        for i, c in enumerate(classes):
            files = self._list(os.path.join(root, c))
            order = np.random.default_rng([seed, i]).permutation(len(files))
            k = round(fraction * len(files)) if len(files) > 1 else 0
            chosen = order[:k] if split != "train" else order[k:]
            items.extend((files[j], i) for j in sorted(chosen))
        return classes, items

    def __repr__(self) -> str:
        return f"image folder {self.root!r} (split {self.split!r})"

    def __len__(self) -> int:
        return len(self._items)

    def path(self, index: int) -> str:
        """The file of example `index`."""
        return self._items[index][0]

    def label(self, index: int) -> int:
        """The class id of example `index` (from the listing: no file is read)."""
        return self._items[index][1]

    def __getitem__(self, index: int) -> Example:
        path, label = self._items[index]
        return read_file(path, self.max_file_bytes), label, path, None
