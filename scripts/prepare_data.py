"""Convert an image folder or a TFDS split into ArrayRecord shards for `data.source='arrayrecord:GLOB'`.

  python scripts/prepare_data.py --source folder:../shared/datasets/clothing-small \
      --splits train,validation --out data/clothing-ar --max_area 100352 --workers 2

then train with --config.data.source='arrayrecord:data/clothing-ar/{split}-*.array_record'.
--max_area (pixels, e.g. 2*224*224 = 100352) pre-resizes larger images keeping their aspect ratio and
re-encodes them as JPEG; 0 keeps the original bytes.
"""

import argparse
import logging

from naraim.cli import ArgumentParser, run_main
from naraim.data.config import default_data_config
from naraim.data.prepare import write_arrayrecord
from naraim.errors import UserError


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--source", required=True, help="folder:PATH or tfds:NAME")
    parser.add_argument("--splits", default="train,validation", help="comma-separated split names")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num_shards", type=int, default=4, help="shards per split")
    parser.add_argument("--max_area", type=int, default=0, help="pre-resize to at most this many pixels")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded images")
    parser.add_argument("--workers", type=int, default=1, help="processes decoding and resizing")
    parser.add_argument("--tfds_data_dir", default="", help="TFDS data dir (tfds: sources)")
    parser.add_argument(
        "--holdout_fraction",
        type=float,
        default=0.1,
        help="folder without split folders: share of each class held out (seeded) as the validation split",
    )
    args = parser.parse_args()
    if not 0 < args.holdout_fraction < 1:
        raise UserError(f"--holdout_fraction={args.holdout_fraction} must be strictly between 0 and 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = default_data_config()
    cfg.tfds_data_dir = args.tfds_data_dir
    cfg.holdout_fraction = args.holdout_fraction
    counts = write_arrayrecord(
        args.source,
        [s for s in args.splits.split(",") if s],
        args.out,
        num_shards=args.num_shards,
        max_area=args.max_area,
        quality=args.quality,
        workers=args.workers,
        data_cfg=cfg,
    )
    print(f"wrote {counts} examples to {args.out}")


if __name__ == "__main__":
    run_main(main)
