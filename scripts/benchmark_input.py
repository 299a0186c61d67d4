"""Input pipeline throughput: images/s in total, per worker core and per CPU-second, and the host-to-device
bytes per example. Prints a readable line and a JSON line.

  python scripts/benchmark_input.py --source folder:../shared/datasets/clothing-small \
      --transforms random_crop_native,native_aspect_ratio_resize,horizontal_flip --num_workers 2

Native resolution: --token_budgets 16,32,64,128 with --transforms ending in fit_to_token_budget, and
--packing first_fit (rows of --max_tokens); images then count images, not rows, and the JSON line adds the
rows' padding share.

'per CPU-second' divides by the CPU time the pipeline's processes used (main + workers), so it stays
meaningful on a machine shared with other jobs; 'per worker core' divides the wall-clock rate by the
number of worker processes (or 1 without workers).
"""

import argparse
import json
import time

import numpy as np
import psutil

from naraim.cli import ArgumentParser, run_main
from naraim.data.config import default_data_config, validate_data_config
from naraim.data.pipeline import make_train_iterator
from naraim.data.profile import stage_seconds


def _cpu_seconds(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--source", default="folder:../shared/datasets/clothing-small")
    naraim_train = "random_crop_native,native_aspect_ratio_resize,horizontal_flip"
    parser.add_argument("--transforms", default=naraim_train, help="comma-separated, in order")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--patch_size", type=int, default=14)
    parser.add_argument("--max_tokens", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=2, help="grain worker processes (0: in-process)")
    parser.add_argument("--read_threads", type=int, default=1, help="threads per process")
    parser.add_argument("--batches", type=int, default=20, help="batches timed per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported")
    parser.add_argument("--warmup", type=int, default=4, help="batches before timing starts")
    parser.add_argument(
        "--jpeg_draft", type=int, default=1, help="1: decode large JPEGs at a reduced DCT scale"
    )
    parser.add_argument("--resample", default="box_bilinear", help="box_bilinear | bicubic")
    parser.add_argument("--token_budgets", default="", help="data.token_budgets, comma-separated ('': none)")
    parser.add_argument("--token_budget_sampling", default="uniform", help="uniform | log_uniform")
    parser.add_argument("--packing", default="none", help="data.packing: none | first_fit | best_fit")
    parser.add_argument("--max_images_per_row", type=int, default=8)
    parser.add_argument("--packing_bins", type=int, default=128)
    parser.add_argument(
        "--profile_examples",
        type=int,
        default=200,
        help="examples timed stage by stage for the breakdown (0: none)",
    )
    args = parser.parse_args()

    cfg = default_data_config()
    cfg.source = args.source
    cfg.transforms = tuple(t for t in args.transforms.split(",") if t)
    cfg.image_size, cfg.max_tokens = args.image_size, args.max_tokens
    cfg.num_workers, cfg.read_threads = args.num_workers, args.read_threads
    cfg.jpeg_draft, cfg.resample = bool(args.jpeg_draft), args.resample
    cfg.token_budgets = tuple(int(b) for b in args.token_budgets.split(",") if b)
    cfg.token_budget_sampling, cfg.packing = args.token_budget_sampling, args.packing
    cfg.max_images_per_row, cfg.packing_bins = args.max_images_per_row, args.packing_bins
    validate_data_config(cfg, args.patch_size)
    it = make_train_iterator(cfg, patch_size=args.patch_size, global_batch_size=args.batch_size, seed=0)
    for _ in range(args.warmup):
        next(it)
    me = psutil.Process()
    runs = []  # (wall seconds, CPU seconds) per repeat
    nbytes, images, real_tokens, row_tokens = 0, 0, 0, 0
    for _ in range(args.repeats):
        cpu0, t0 = _cpu_seconds(me), time.perf_counter()
        for _ in range(args.batches):
            batch = next(it)
            nbytes += sum(np.asarray(v).nbytes for v in batch.values())
            images += int(np.sum(batch["length"] > 0))
            real_tokens += int(np.sum(batch["length"]))
            row_tokens += batch["patches"].shape[0] * batch["patches"].shape[1]
        runs.append((time.perf_counter() - t0, _cpu_seconds(me) - cpu0))
    images //= args.repeats  # per repeat
    wall = float(np.median([w for w, _ in runs]))
    cpu = float(np.median([c for _, c in runs]))
    result = {
        "source": args.source,
        "transforms": list(cfg.transforms),
        "num_workers": args.num_workers,
        "images_per_sec": images / wall,
        "images_per_sec_per_worker_core": images / wall / max(1, args.num_workers),
        "images_per_cpu_sec": images / cpu if cpu > 0 else None,
        "best_images_per_sec": images / min(w for w, _ in runs),
        "bytes_per_example": nbytes / (images * args.repeats),
        "token_budgets": list(cfg.token_budgets),
        "packing": cfg.packing,
        "pad_fraction": 1 - real_tokens / row_tokens,
        "real_tokens_per_image": real_tokens / (images * args.repeats),
        "images_per_repeat": images,
        "repeats": args.repeats,
    }
    if hasattr(it, "close"):
        it.close()
    if args.profile_examples:
        stages = stage_seconds(cfg, args.patch_size, args.profile_examples)
        per_example = 1.0 / result["images_per_cpu_sec"] if cpu > 0 else sum(stages.values())
        # what the pipeline spends beyond the stages: batching, shared-memory transport, process overhead
        stages["transport_and_batching"] = max(per_example - sum(stages.values()), 0.0)
        result["cpu_ms_per_example"] = {k: 1e3 * v for k, v in stages.items()}
        result["cpu_share"] = {k: v / max(sum(stages.values()), 1e-12) for k, v in stages.items()}
    per_cpu = f"{result['images_per_cpu_sec']:.0f}" if cpu > 0 else "n/a"
    print(
        f"median of {args.repeats} x {images} images: {result['images_per_sec']:.0f} images/s total, "
        f"{result['images_per_sec_per_worker_core']:.0f} per worker core ({args.num_workers} workers), "
        f"{per_cpu} per CPU-second; {result['bytes_per_example'] / 1e3:.1f} KB host-to-device per example"
    )
    if "cpu_share" in result:
        print("CPU share: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in result["cpu_share"].items()))
    print(json.dumps(result))


if __name__ == "__main__":
    run_main(main)
