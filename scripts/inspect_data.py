"""See the tokens a config makes of a split: the first N examples, as the model receives them.

  python scripts/inspect_data.py --config configs/naraim_b14.py --split validation --num 16 --out runs/look \
      --config.data.source=folder:../shared/datasets/clothing-small [--train --seed 0]

Examples come in the source's own order, through the split's evaluation transforms (with --train, the
training transforms with the rng of --seed, epoch 0). Writes OUT/tokens.npz (patches uint8 [N, T, P*P*3],
coords int32 [N, T, 2], length [N], grid [N, 2], path [N]: the source file, or '' for sources without
files) and OUT/tokens.png, a contact sheet of the images re-assembled from their patches at their aspect
ratio. Examples that do not decode are skipped (and named in a warning), so N counts usable ones.
"""

import os
import sys

import matplotlib
import numpy as np
from absl import flags

from naraim.cli import run_main
from naraim.data.config import validate_data_config
from naraim.data.pipeline import make_loader
from naraim.data.sources.folder import FolderSource
from naraim.data.tokens import unpatchify
from naraim.errors import UserError
from naraim.infra.flags import define_config_flag, parse_flags
from naraim.model.sizes import patch_size
from naraim.train.config import default_pretrain_config

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_CONFIG = define_config_flag()
_SPLIT = flags.DEFINE_string("split", "validation", "the split to read (train, validation, test, ...)")
_NUM = flags.DEFINE_integer("num", 16, "how many usable examples, from the start of the split")
_OUT = flags.DEFINE_string("out", None, "folder for tokens.npz and tokens.png")
_TRAIN = flags.DEFINE_bool(
    "train", False, "use the training transforms (random) instead of the evaluation ones"
)
_SEED = flags.DEFINE_integer("seed", 0, "seeds the training transforms (with --train)")


def inspect(cfg, split: str, num: int, train: bool, seed: int) -> dict[str, np.ndarray]:
    """The tokens of the first `num` usable examples of `split` (see the module docstring), stacked."""
    p = patch_size(cfg.model.variant)
    names = cfg.data.transforms if train else cfg.data.eval_transforms
    validate_data_config(cfg.data, p)
    loader = make_loader(cfg.data, split, names, p, seed)
    rows = []
    for index in range(len(loader.source)):
        if len(rows) == num:
            break
        decoded = loader.decode(index)
        if decoded is None:
            continue
        ex = loader.train_example(len(loader.source), 0, index) if train else loader.eval_example(index, True)
        path = loader.source.path(index) if isinstance(loader.source, FolderSource) else ""
        rows.append({**ex, "path": path})
    if not rows:
        raise UserError(f"split {split!r} of {loader.source!r} has no usable example")
    return {
        "patches": np.stack([r["patches"] for r in rows]),
        "coords": np.stack([r["coords"] for r in rows]),
        "length": np.asarray([r["length"] for r in rows], np.int32),
        "grid": np.stack([r["grid"] for r in rows]),
        "path": np.asarray([r["path"] for r in rows]),
    }


def contact_sheet(tokens: dict[str, np.ndarray], p: int, path: str, title: str) -> None:
    """PNG with each example re-assembled from its raster-order patches, at its aspect ratio."""
    n = len(tokens["length"])
    cols = min(n, 8)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        grid = tokens["grid"][i]
        image = unpatchify(tokens["patches"][i], grid, p)
        ax = axes.ravel()[i]
        ax.imshow(image)
        ax.set_title(f"{grid[0]}x{grid[1]} ({tokens['length'][i]})", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    cfg = parse_flags(sys.argv, _CONFIG, default_pretrain_config)
    if not _OUT.value:
        raise UserError("--out is required: pass --out=runs/<name>")
    if _NUM.value < 1:
        raise UserError(f"--num={_NUM.value} must be at least 1")
    tokens = inspect(cfg, _SPLIT.value, _NUM.value, _TRAIN.value, _SEED.value)
    os.makedirs(_OUT.value, exist_ok=True)
    np.savez(os.path.join(_OUT.value, "tokens.npz"), **tokens)
    kind = f"training transforms, seed {_SEED.value}" if _TRAIN.value else "evaluation transforms"
    title = f"{_CONFIG.value.variant or 'config'}: split {_SPLIT.value}, {kind}"
    contact_sheet(tokens, patch_size(cfg.model.variant), os.path.join(_OUT.value, "tokens.png"), title)
    print(f"wrote {_OUT.value}/tokens.npz and tokens.png ({len(tokens['length'])} examples)")


if __name__ == "__main__":
    run_main(main)
