"""The `data.*` section of a config: defaults and validation."""

import glob
import os

import ml_collections

from naraim.data import orderings, synthetic
from naraim.data.transforms import (
    BUDGET_SAMPLINGS,
    CROP_CHOICES,
    NATIVE_CROPS,
    NATIVE_GRIDS,
    RESAMPLES,
    TRANSFORM_NAMES,
)
from naraim.errors import UserError
from naraim.infra.options import Option, section

# Transforms whose output sides are multiples of the patch size.
SIZING_TRANSFORMS = (
    "native_aspect_ratio_resize",
    "fit_to_token_budget",
    "random_resized_crop",
    "resize_shorter_center_crop",
)
SOURCE_KINDS = ("synthetic", "folder:PATH", "tfds:NAME", "arrayrecord:GLOB")
PACKINGS = ("none", "first_fit", "best_fit")


DATA_OPTIONS = {
    "source": Option("synthetic", "'synthetic' | 'folder:PATH' | 'tfds:NAME' | 'arrayrecord:GLOB'"),
    "image_size": Option(224, "S: images are resized to about S*S pixels"),
    "max_tokens": Option(
        256, "N: token budget every example is padded to; 0 = (image_size / patch)^2, the square grid"
    ),
    "token_budgets": Option(
        (),
        "training: each image's patch budget is drawn from these (its grid: the largest at its aspect ratio "
        "with at most that many patches; data.transforms must end its geometry with fit_to_token_budget); "
        "() = the fixed area of data.image_size",
    ),
    "token_budget_sampling": Option(
        "uniform", "'uniform' over token_budgets | 'log_uniform' between their smallest and largest"
    ),
    "budget_upscale": Option(False, "token budgets may enlarge an image beyond its own patches"),
    "packing": Option(
        "none",
        "training rows: 'none' (one image per row, padded to max_tokens) | 'first_fit' | 'best_fit' (grain's "
        "packers: several images per row of max_tokens, each attending only to itself)",
    ),
    "max_images_per_row": Option(4, "packing: at most this many images in one row"),
    "packing_bins": Option(64, "packing: rows filled at once (more: less padding, a longer window)"),
    "transforms": Option(("native_aspect_ratio_resize", "horizontal_flip"), "training, applied in order"),
    "eval_transforms": Option(("native_aspect_ratio_resize",), "evaluation and probes' validation, in order"),
    "ordering": Option("raster", "patch order: 'raster' | 'nested_raster(b)' | 'round_robin(b)' (DARL)"),
    "num_workers": Option(0, "grain worker processes (0: decode in the main process)"),
    "read_threads": Option(4, "threads per process reading examples (PIL releases the GIL)"),
    "prefetch_batches": Option(2, "batches each worker process keeps ready"),
    "shuffle": Option(True, "a seeded shuffle of the training split every epoch"),
    "train_split": Option("train", "the split pre-training (and probe training) reads"),
    "val_split": Option("validation", "the split evaluation reads"),
    "crop_scale": Option(
        (0.4, 1.0), "random_crop_native / random_resized_crop: area fraction range (NARAIM and AIM)"
    ),
    "crop_ratio": Option((3 / 4, 4 / 3), "width/height range of the crops (log-uniform)"),
    "crop_choice": Option(
        "first",
        "of the 10 (area, ratio) draws, the crop kept: the 'first' that fits (torchvision) | the 'last' "
        "(the NARAIM reference's RandomCrop and RandomResizedCrop)",
    ),
    "horizontal_flip_prob": Option(0.5, "horizontal_flip: probability of a mirror"),
    "resample": Option(
        "box_bilinear",
        "resampling of every resize: 'box_bilinear' (BOX shrinking, BILINEAR enlarging) | 'bicubic' "
        "(the papers')",
    ),
    "native_grid": Option(
        "exact",
        "native_aspect_ratio_resize grid: 'exact' | 'reference' (the NARAIM code's integer truncation)",
    ),
    "native_crop": Option(
        "center",
        "native_aspect_ratio_resize crop: 'center' (the NARAIM code) | 'top_left' (its paper's text)",
    ),
    "color_jitter": Option(
        (0.4, 0.4, 0.2, 0.1),
        "color_jitter transform: torchvision ColorJitter(brightness, contrast, saturation, hue)",
    ),
    "color_jitter_prob": Option(0.8, "color_jitter: probability that an image is jittered"),
    "rand_augment": {
        "num_ops": Option(2, "rand_augment transform (timm's rand-m9-mstd0.5): operations per image"),
        "magnitude": Option(9.0, "rand_augment: magnitude in [0, 10]"),
        "magnitude_std": Option(0.5, "rand_augment: standard deviation of the magnitude"),
        "prob": Option(0.5, "rand_augment: probability that each operation is applied"),
    },
    "jpeg_draft": Option(
        True,
        "decode large JPEGs at a reduced DCT scale that keeps the pixels the transforms need (False: "
        "full size)",
    ),
    "max_pixels": Option(100_000_000, "larger images are skipped (named in a warning) before decoding"),
    "max_file_bytes": Option(
        64 * 2**20, "folder sources: larger files are skipped (named) without being read"
    ),
    "holdout_fraction": Option(
        0.1, "folder:PATH without split folders: fraction of each class held out as the validation split"
    ),
    "holdout_seed": Option(0, "seeds that held-out validation split"),
    "tfds_data_dir": Option("", "'' -> TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)"),
    "synthetic": {
        "num_classes": Option(10, "shape classes of the synthetic images (at most 10)"),
        "min_side": Option(
            0, "shorter side of the synthetic images in px; 0: max(32, 2/7 S), 64 px at S = 224"
        ),
        "max_side": Option(0, "longer side of the synthetic images in px; 0: 10/7 S, 320 px at S = 224"),
        "train_size": Option(100_000, "synthetic training images"),
        "validation_size": Option(2_000, "synthetic validation images"),
        "test_size": Option(2_000, "synthetic test images"),
    },
}


def default_data_config() -> ml_collections.ConfigDict:
    """Every `data.*` key with its default: the NARAIM evaluation geometry on synthetic images."""
    return section(DATA_OPTIONS)


def synthetic_sides(cfg: ml_collections.ConfigDict) -> tuple[int, int]:
    """(min_side, max_side) of the synthetic images in pixels, resolving 0 relative to data.image_size."""
    s = int(cfg.image_size)
    lo = int(cfg.synthetic.min_side) or max(32, round(s * 2 / 7))
    hi = int(cfg.synthetic.max_side) or max(lo, round(s * 10 / 7))
    return lo, hi


def token_budget(cfg: ml_collections.ConfigDict, patch_size: int) -> int:
    """N, the tokens every example is padded to: data.max_tokens, or with 0 the (S/P)^2 patches of an S x S
    image (square recipes: the budget follows data.image_size and the model's patch)."""
    return int(cfg.max_tokens) or (int(cfg.image_size) // patch_size) ** 2


def source_kind(source: str) -> tuple[str, str]:
    """Splits `data.source` into (kind, argument): 'folder:/x' -> ('folder', '/x')."""
    kind, _, arg = source.partition(":")
    if kind == "synthetic" and not arg:
        return kind, ""
    if kind in ("folder", "tfds", "arrayrecord") and arg:
        return kind, arg
    raise UserError(
        f"data.source={source!r} is not one of {', '.join(SOURCE_KINDS)}; pick one of those forms"
    )


def _check_transforms(name: str, transforms, image_size: int, patch_size: int, max_tokens: int) -> None:
    transforms = tuple(transforms)
    for t in transforms:
        if t not in TRANSFORM_NAMES:
            raise UserError(f"{name} has unknown transform {t!r}; known: {', '.join(TRANSFORM_NAMES)}")
    sizing = [i for i, t in enumerate(transforms) if t in SIZING_TRANSFORMS]
    crops = [i for i, t in enumerate(transforms) if t == "random_crop_native"]
    if not sizing or (crops and crops[-1] > sizing[-1]):
        raise UserError(
            f"{name}={transforms} must end its geometry with one of {', '.join(SIZING_TRANSFORMS)} "
            "(sides must become multiples of the patch size)"
        )
    full_grid = (image_size // patch_size) ** 2
    if transforms[sizing[-1]] != "fit_to_token_budget" and max_tokens < full_grid:
        raise UserError(
            f"data.max_tokens={max_tokens} is below the {full_grid} patches of a {image_size}px image with "
            f"patch {patch_size}; raise data.max_tokens or end {name} with 'fit_to_token_budget'"
        )


def _check_budgets(cfg: ml_collections.ConfigDict, n: int) -> None:
    budgets = tuple(int(b) for b in cfg.token_budgets)
    if budgets and (min(budgets) < 1 or max(budgets) > n):
        raise UserError(
            f"data.token_budgets={budgets} must lie in [1, data.max_tokens={n}]: no row can hold an image "
            "of a larger budget; raise data.max_tokens or lower the budgets"
        )
    sizing = [t for t in cfg.transforms if t in SIZING_TRANSFORMS]
    if budgets and sizing[-1:] != ["fit_to_token_budget"]:
        raise UserError(
            f"data.token_budgets needs data.transforms to end its geometry with 'fit_to_token_budget', which "
            f"sizes each image to its budget; got {tuple(cfg.transforms)}"
        )
    for key, allowed in (("token_budget_sampling", BUDGET_SAMPLINGS), ("packing", PACKINGS)):
        if cfg[key] not in allowed:
            raise UserError(f"data.{key}={cfg[key]!r} is not supported: use one of {', '.join(allowed)}")
    if int(cfg.max_images_per_row) < 1 or int(cfg.packing_bins) < 1:
        raise UserError(
            f"data.max_images_per_row={cfg.max_images_per_row} and data.packing_bins={cfg.packing_bins} "
            "must be at least 1"
        )


def validate_data_config(cfg: ml_collections.ConfigDict, patch_size: int) -> None:
    """Raises UserError naming the first bad `data.*` value (cfg is the `data` section)."""
    s = int(cfg.image_size)
    if patch_size <= 0 or s <= 0 or s % patch_size:
        raise UserError(
            f"patch size {patch_size} does not divide data.image_size={s}; pick an image size that is a "
            "multiple of the patch size"
        )
    if int(cfg.max_tokens) < 0:
        raise UserError(
            f"data.max_tokens={cfg.max_tokens} is negative; use at least 1 (e.g. {(s // patch_size) ** 2}), "
            "or 0 for the square grid"
        )
    n = token_budget(cfg, patch_size)
    _check_budgets(cfg, n)
    _check_transforms("data.transforms", cfg.transforms, s, patch_size, n)
    _check_transforms("data.eval_transforms", cfg.eval_transforms, s, patch_size, n)
    if int(cfg.max_pixels) < 1:
        raise UserError(f"data.max_pixels={cfg.max_pixels} must be at least 1 (e.g. 100000000)")
    if int(cfg.max_file_bytes) < 1:
        raise UserError(f"data.max_file_bytes={cfg.max_file_bytes} must be at least 1 (e.g. {64 * 2**20})")
    if int(cfg.num_workers) < 0:
        raise UserError(f"data.num_workers={cfg.num_workers} is negative; use 0 or more worker processes")
    lo, hi = cfg.crop_scale
    if not 0 < lo <= hi <= 1:
        raise UserError(f"data.crop_scale={tuple(cfg.crop_scale)} must satisfy 0 < lo <= hi <= 1")
    lo, hi = cfg.crop_ratio
    if not 0 < lo <= hi:
        raise UserError(f"data.crop_ratio={tuple(cfg.crop_ratio)} must satisfy 0 < lo <= hi")
    for key, allowed in (
        ("crop_choice", CROP_CHOICES),
        ("resample", RESAMPLES),
        ("native_grid", NATIVE_GRIDS),
        ("native_crop", NATIVE_CROPS),
    ):
        if cfg[key] not in allowed:
            raise UserError(f"data.{key}={cfg[key]!r} is not supported: use one of {', '.join(allowed)}")
    jitter = tuple(float(x) for x in cfg.color_jitter)
    if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5 or not 0 <= cfg.color_jitter_prob <= 1:
        raise UserError(
            f"data.color_jitter={tuple(cfg.color_jitter)} needs 4 values >= 0 (brightness, contrast, "
            f"saturation, hue <= 0.5) and data.color_jitter_prob={cfg.color_jitter_prob} a value in [0, 1]"
        )
    ra = cfg.rand_augment
    if (
        int(ra.num_ops) < 0
        or not 0 <= float(ra.magnitude) <= 10
        or ra.magnitude_std < 0
        or not 0 <= ra.prob <= 1
    ):
        raise UserError(
            f"data.rand_augment needs num_ops >= 0, magnitude in [0, 10], magnitude_std >= 0 and prob in "
            f"[0, 1]; got {dict(ra)}"
        )
    if not 0 < float(cfg.holdout_fraction) < 1:
        raise UserError(f"data.holdout_fraction={cfg.holdout_fraction} must be strictly between 0 and 1")
    syn = cfg.synthetic
    lo, hi = synthetic_sides(cfg)
    if int(syn.num_classes) < 1 or int(syn.min_side) < 0 or int(syn.max_side) < 0 or not 1 <= lo <= hi:
        raise UserError(
            "data.synthetic needs num_classes >= 1 and 1 <= min_side <= max_side (0 = relative to image_size)"
        )
    kind, arg = source_kind(cfg.source)
    if kind == "folder" and not os.path.isdir(arg):
        raise UserError(f"image folder {arg!r} (data.source) does not exist; fix the path in data.source")
    if kind == "arrayrecord" and not glob.glob(arg.replace("{split}", cfg.train_split)):
        raise UserError(
            f"no ArrayRecord files match {arg!r} (data.source); run scripts/prepare_data.py or fix it"
        )
    if kind == "synthetic" and int(syn.num_classes) > len(synthetic.CLASS_NAMES):
        raise UserError(
            f"data.synthetic.num_classes={syn.num_classes} exceeds the {len(synthetic.CLASS_NAMES)} "
            "synthetic classes; use at most that many"
        )
    orderings.parse_ordering(cfg.ordering)
