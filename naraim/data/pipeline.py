"""grain pipelines producing batches of the batch contract (docs/design.md).

Per example: source[i] -> decode (bad files skipped with a warning) -> transforms with an rng derived from
(seed, epoch, i) (with data.token_budgets, the image's budget is drawn first from the same rng) -> tokens
(patchify, pad to N) -> ordering. Training shuffles each epoch (seeded), shards by process, repeats forever,
packs images into rows with data.packing (grain's packers; naraim.model.segments describes the packed
batch) and batches per process; its iterator's get_state()/set_state() resume mid-epoch with identical
batches. Evaluation visits each example once, unpacked, and pads the last batch with examples whose 'valid'
is False.

With `data.num_workers` > 0, each worker process assembles whole training batches from every
num_workers-th example of the stream (cheapest: one transfer per batch), so the batches depend on the
number of workers (deterministically); resume with the same number. Evaluation batches do not.
"""

import atexit
import dataclasses
import functools
import logging
import math
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Iterator

import grain.experimental
import grain.python as grain
import ml_collections
import numpy as np
from absl import flags
from PIL import Image

from naraim.data import orderings
from naraim.data.config import token_budget
from naraim.data.decode import decode_image, upscale_to_patch
from naraim.data.sources import Source, open_source
from naraim.data.sources.base import UnusableExample
from naraim.data.tokens import to_tokens
from naraim.data.transforms import (
    Transform,
    apply_transforms,
    draw_token_budget,
    min_source_pixels,
    transforms_from_config,
    with_token_budget,
)
from naraim.errors import UserError

log = logging.getLogger("naraim.data")
_QUIET_TRACKER = "ignore:resource_tracker:UserWarning"
_skipped: dict[str, str] = {}  # name -> reason, of the unusable examples this process met


def skipped_examples() -> int:
    """Distinct unusable examples (files, records) this process skipped so far (workers count their own)."""
    return len(_skipped)


def _skip(name: str, error: Exception) -> None:
    """Counts an unusable example once and warns once per example (it comes back every epoch)."""
    if name in _skipped:
        return
    _skipped[name] = reason = f"{type(error).__name__}: {error}"
    log.warning("skipping unusable image %s (%s); %d skipped so far", name, reason, len(_skipped))


def _exit_with_parent(worker_index: int, worker_count: int) -> None:
    """grain worker_init_fn: the worker ignores Ctrl-C (the main process stops it) and exits when its parent
    dies (a SIGKILLed trainer leaves no orphan holding memory)."""
    del worker_index, worker_count
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


@dataclasses.dataclass(frozen=True)
class ExampleLoader:
    """Turns a source index into one example of the batch contract (picklable, for worker processes)."""

    source: Source
    transforms: tuple[Transform, ...]
    patch_size: int
    max_tokens: int
    seed: int
    min_area: int
    ordering: str
    max_pixels: int
    token_budgets: tuple[int, ...] = ()  # training: each example draws its budget from these
    budget_sampling: str = "uniform"
    packed: bool = False  # training examples unpadded, per-image fields [1, ...], for the packer

    def decode(self, index: int) -> tuple[Image.Image, int, float | None] | None:
        """(RGB image, label, the original's aspect ratio if the source stores it) of source[index], or None
        (warned and counted) if anything about it fails: reading, the container, decoding."""
        name = f"example {index}"
        try:
            raw, label, name, aspect_ratio = self.source[index]
            limits = dict(patch_size=self.patch_size, max_tokens=self.max_tokens)
            if isinstance(raw, np.ndarray):
                image = upscale_to_patch(Image.fromarray(raw), **limits)
            else:
                image = decode_image(raw, **limits, min_area=self.min_area, max_pixels=self.max_pixels)
            return image, int(label), aspect_ratio
        except Exception as e:  # a bad example is skipped whatever the source, container or decoder raised
            _skip(e.name if isinstance(e, UnusableExample) else name, e)
            return None

    def tokens(
        self, image: Image.Image, label: int, aspect_ratio: float | None, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        w, h = image.size
        transforms = self.transforms
        if self.token_budgets:
            transforms = with_token_budget(
                transforms, draw_token_budget(rng, self.token_budgets, self.budget_sampling)
            )
        ex = to_tokens(
            np.asarray(apply_transforms(image, rng, transforms)),
            patch_size=self.patch_size,
            max_tokens=self.max_tokens,
        )
        if self.ordering != "raster":
            ex["patches"], ex["coords"] = orderings.apply_ordering(
                ex["patches"], ex["coords"], ex["grid"], int(ex["length"]), self.ordering
            )
        ex["label"] = np.int32(label)
        ex["aspect_ratio"] = np.float32(w / h if aspect_ratio is None else aspect_ratio)
        if self.packed:  # the packer pads the rows: tokens unpadded, one entry per image for the rest
            n = int(ex["length"])
            return {k: v[:n] if k in PACKED_TOKENS else np.asarray(v)[None] for k, v in ex.items()}
        return ex

    def require_usable(self) -> None:
        """Raises UserError unless some example decodes (stops at the first one that does)."""
        if not any(self.decode(i) is not None for i in range(len(self.source))):
            raise _no_usable_image(self.source)

    def train_example(self, shard_len: int, position: int, index: int) -> dict[str, np.ndarray]:
        """Example at stream `position` (source `index`); a bad image is replaced by the next good one."""
        epoch = position // shard_len
        rng = np.random.default_rng([self.seed, epoch, index])
        n = len(self.source)
        for k in range(n):
            decoded = self.decode((index + k) % n)
            if decoded is not None:
                return self.tokens(*decoded, rng)
        raise _no_usable_image(self.source)

    def eval_example(self, index: int, valid: bool) -> dict[str, np.ndarray]:
        """Example `index` with 'valid'; padding and unusable images give an empty example, valid False."""
        decoded = self.decode(index) if valid else None
        if decoded is None:
            return _empty_example(self.patch_size, self.max_tokens)
        ex = self.tokens(*decoded, np.random.default_rng([self.seed, 0, index]))
        ex["valid"] = np.bool_(True)
        return ex


def _no_usable_image(source: Source) -> UserError:
    return UserError(f"{source!r} holds no usable image; check data.source and the files it names")


def _empty_example(patch_size: int, max_tokens: int) -> dict[str, np.ndarray]:
    return {
        "patches": np.zeros((max_tokens, patch_size * patch_size * 3), np.uint8),
        "coords": np.zeros((max_tokens, 2), np.int32),
        "grid": np.ones(2, np.int32),
        "length": np.int32(1),
        "label": np.int32(-1),
        "aspect_ratio": np.float32(1.0),
        "valid": np.bool_(False),
    }


def make_loader(
    data_cfg: ml_collections.ConfigDict,
    split: str,
    names,
    patch_size: int,
    seed: int,
    *,
    training: bool = False,
) -> ExampleLoader:
    """The ExampleLoader of `split` with the transforms `names` (data_cfg's geometry and options); training
    adds data.token_budgets and, with data.packing, unpadded examples for the packer."""
    s, n = int(data_cfg.image_size), token_budget(data_cfg, patch_size)
    budgets = tuple(int(b) for b in data_cfg.token_budgets) if training else ()
    upscale = bool(data_cfg.budget_upscale) or not budgets
    return ExampleLoader(
        source=open_source(data_cfg, split),
        transforms=transforms_from_config(data_cfg, names, patch_size, n, upscale),
        patch_size=patch_size,
        max_tokens=n,
        seed=int(seed),
        min_area=min_source_pixels(tuple(names), s, data_cfg.crop_scale, max(budgets or (n,)) * patch_size**2)
        if data_cfg.jpeg_draft
        else 0,
        ordering=data_cfg.ordering,
        max_pixels=int(data_cfg.max_pixels),
        token_budgets=budgets,
        budget_sampling=data_cfg.token_budget_sampling,
        packed=training and data_cfg.packing != "none",
    )


def _per_process_batch(global_batch_size: int, process_count: int) -> int:
    if global_batch_size < 1 or global_batch_size % process_count:
        raise UserError(
            f"batch_size={global_batch_size} is not a positive multiple of the {process_count} processes; "
            "change batch_size"
        )
    return global_batch_size // process_count


PACKED_TOKENS = ("patches", "coords")  # per-token example fields
PER_IMAGE = ("grid", "length", "label", "aspect_ratio")  # one entry per image (slot) of a row


def _packed_rows(ex: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A row from grain's packer -> the packed batch contract (naraim.model.segments): segment_ids and
    positions from the patches', empty image slots with grid (1, 1), length 0 and label -1."""
    empty = ex["length_segment_ids"] == 0
    return {
        "patches": ex["patches"],
        "coords": ex["coords"],
        "segment_ids": ex["patches_segment_ids"],
        "positions": ex["patches_positions"],
        "grid": np.where(empty[:, None], 1, ex["grid"]).astype(np.int32),
        "length": np.where(empty, 0, ex["length"]).astype(np.int32),
        "label": np.where(empty, -1, ex["label"]).astype(np.int32),
        "aspect_ratio": np.where(empty, 1.0, ex["aspect_ratio"]).astype(np.float32),
    }


def _pack(it: grain.IterDataset, data_cfg: ml_collections.ConfigDict, max_tokens: int) -> grain.IterDataset:
    """Rows of `max_tokens` tokens holding up to data.max_images_per_row whole images, by grain's first-fit
    or best-fit packer over data.packing_bins rows at a time."""
    m = int(data_cfg.max_images_per_row)
    packer = {
        "first_fit": grain.experimental.FirstFitPackIterDataset,
        "best_fit": grain.experimental.BestFitPackIterDataset,
    }[data_cfg.packing]
    lengths = {k: max_tokens if k in PACKED_TOKENS else m for k in (*PACKED_TOKENS, *PER_IMAGE)}
    rows = packer(
        it,
        length_struct=lengths,
        num_packing_bins=int(data_cfg.packing_bins),
        shuffle_bins=False,
        max_sequences_per_bin=m,
    )
    return rows.map(_packed_rows)


def _in_parallel(
    ds: grain.MapDataset,
    data_cfg: ml_collections.ConfigDict,
    batch: int | None,
    pack_tokens: int | None = None,
) -> grain.IterDataset:
    """Elements of `ds` read by `data.read_threads` threads (packed into rows of `pack_tokens` tokens unless
    None, then batched by `batch` unless None) and, with `data.num_workers` > 0, by worker processes that
    each take every num_workers-th element."""
    threads = max(1, int(data_cfg.read_threads))
    read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(batch or 1, 2 * threads))
    it = ds.to_iter_dataset(read)
    if pack_tokens is not None:
        it = _pack(it, data_cfg, pack_tokens)
    if batch is not None:
        it = it.batch(batch, drop_remainder=True)
    if int(data_cfg.num_workers) > 0:
        if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags (defaults are fine)
            flags.FLAGS.mark_as_parsed()
        # multiprocessing's resource tracker (started with the workers, with this process's -W options)
        # would warn at exit about the shared memory of a worker that died, which it then frees itself
        if _QUIET_TRACKER not in sys.warnoptions:
            sys.warnoptions.append(_QUIET_TRACKER)
        options = grain.MultiprocessingOptions(
            num_workers=int(data_cfg.num_workers),
            per_worker_buffer_size=max(1, int(data_cfg.prefetch_batches)),
        )
        it = it.mp_prefetch(options, worker_init_fn=_exit_with_parent)
    return it


def make_train_iterator(
    data_cfg: ml_collections.ConfigDict,
    *,
    patch_size: int,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    indices: np.ndarray | None = None,
) -> grain.DatasetIterator:
    """Endless iterator of training batches (numpy dicts, per-process batch = global / process_count);
    data_cfg has passed validate_data_config (each entry point validates its config once).

    indices: the source indices of data.train_split to train on (default: all of them).
    Supports get_state() -> dict and set_state(dict): the restored iterator yields the same next batches.
    """
    batch = _per_process_batch(global_batch_size, process_count)
    loader = make_loader(data_cfg, data_cfg.train_split, data_cfg.transforms, patch_size, seed, training=True)
    loader.require_usable()
    if indices is None:
        indices = np.arange(len(loader.source))
    shard = grain.MapDataset.source(np.asarray(indices, np.int64))[process_index::process_count]
    if len(shard) == 0:
        raise UserError(f"the training split has fewer examples than the {process_count} processes; add data")
    ds = shard.shuffle(seed=int(seed) % 2**32) if data_cfg.shuffle else shard
    ds = ds.repeat(None).map_with_index(functools.partial(loader.train_example, len(shard)))
    iterator = iter(_in_parallel(ds, data_cfg, batch, loader.max_tokens if loader.packed else None))
    if int(data_cfg.num_workers) > 0:  # stop the worker processes before interpreter teardown
        ref = weakref.ref(iterator)
        atexit.register(lambda: ref() is not None and ref().close())
    return iterator


class EvalBatches:
    """Re-iterable evaluation batches: each pass starts afresh and stops its worker processes at its end."""

    def __init__(self, ds: grain.IterDataset, num_batches: int):
        self._ds, self._num_batches = ds, num_batches

    def __len__(self) -> int:
        return self._num_batches

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        it = iter(self._ds)
        try:
            yield from it
        finally:
            it.close()


def make_eval_iterator(
    data_cfg: ml_collections.ConfigDict,
    *,
    split: str,
    patch_size: int,
    global_batch_size: int,
    max_examples: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    indices: np.ndarray | None = None,
) -> EvalBatches:
    """Re-iterable evaluation batches with 'valid' bool [B]: each of the first `max_examples` examples of
    `split` (or of its source indices `indices`, in that order) appears exactly once over all processes;
    padding (and unusable images) have valid False. Every process yields the same number of batches."""
    batch = _per_process_batch(global_batch_size, process_count)
    loader = make_loader(data_cfg, split, data_cfg.eval_transforms, patch_size, 0)
    loader.require_usable()
    indices = np.arange(len(loader.source)) if indices is None else np.asarray(indices, np.int64)
    if max_examples is not None:
        indices = indices[: int(max_examples)]
    num_batches = math.ceil(len(indices) / global_batch_size)

    # One element per batch, so that worker processes only ever produce whole batches, in order.
    ds = grain.MapDataset.range(num_batches).map(
        functools.partial(_eval_batch, loader, indices, batch, global_batch_size, process_index)
    )
    return EvalBatches(_in_parallel(ds, data_cfg, None), num_batches)


def _eval_batch(
    loader: ExampleLoader, indices: np.ndarray, batch: int, global_batch: int, process_index: int, k: int
) -> dict[str, np.ndarray]:
    """Batch k of this process: examples indices[k*global_batch + process_index*batch + [0, batch)]."""
    first = k * global_batch + process_index * batch
    n = len(indices)
    examples = [loader.eval_example(int(indices[min(g, n - 1)]), g < n) for g in range(first, first + batch)]
    return {key: np.stack([ex[key] for ex in examples]) for key in examples[0]}


def split_size(data_cfg: ml_collections.ConfigDict, split: str) -> int:
    """Number of examples listed in `split` of data_cfg.source (unusable files included)."""
    return len(open_source(data_cfg, split))


def num_classes(data_cfg: ml_collections.ConfigDict) -> int:
    """Number of classes of data_cfg.source (from its training split)."""
    return int(open_source(data_cfg, data_cfg.train_split).num_classes)
