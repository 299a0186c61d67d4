"""Images per CPU-second of the NARAIM reference's tf.data input pipeline, for a side-by-side comparison with
scripts/benchmark_input.py. Runs with a Python that has TensorFlow and jax (not naraim's environment) and the
reference code checked out outside this repository (github.com/daniel-gallo/naraim: dataset.py and
transformations/); nothing of it is copied here.

  /path/to/tf-venv/bin/python scripts/benchmark_reference_input.py --reference_repo /path/to/naraim-ref \
      --images data/imagenet_like --batches 15 --repeats 3

It writes the JPEGs of --images (searched recursively) once into TFRecords as the reference expects (image,
path, class_id, image_id), then times the reference's training pipeline as its main.py builds it for NARAIM
(random_horizontal_flip, random_crop (0.4-1, 3/4-4/3, >= 224^2 px), native_aspect_ratio_resize(224, 14);
shuffle, repeat, batch, prefetch). Prints a readable line and a JSON line.
"""

import argparse
import glob
import json
import os
import sys
import time
import types


def _tfrecords(images: str, out: str) -> list[str]:
    import tensorflow as tf  # this script runs with the reference's Python; --help works without it

    paths = sorted(
        p
        for p in glob.glob(os.path.join(images, "**", "*"), recursive=True)
        if p.lower().endswith((".jpg", ".jpeg"))
    )
    if not paths:
        sys.exit(f"error: no .jpg files under {images}")
    os.makedirs(out, exist_ok=True)
    files = [os.path.join(out, f"train-{i}.tfrec") for i in range(4)]
    if all(os.path.exists(f) for f in files):
        return files
    writers = [tf.io.TFRecordWriter(f) for f in files]
    for i, path in enumerate(paths):
        feature = {
            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[open(path, "rb").read()])),
            "path": tf.train.Feature(bytes_list=tf.train.BytesList(value=[path.encode()])),
            "class_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[0])),
            "image_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[i])),
        }
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        writers[i % len(writers)].write(example.SerializeToString())
    for w in writers:
        w.close()
    return files


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, like naraim's scripts (this one runs without naraim)
        sys.exit(f"error: {message} (see --help)")


def main() -> None:
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference_repo", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument(
        "--tfrecords", default="", help="folder for the TFRecords (default: IMAGES_tfrecords)"
    )
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import psutil  # the reference's Python, not naraim's: imported after --help
    import tensorflow as tf

    # The reference's transformations package imports timm for AutoAugment, which this pipeline does not use.
    sys.modules["timm"] = types.ModuleType("timm")
    sys.modules["timm.data"] = types.ModuleType("timm.data")
    sys.modules["timm.data.auto_augment"] = types.SimpleNamespace(rand_augment_transform=None)
    sys.path.insert(0, args.reference_repo)
    from dataset import load_dataset  # noqa: E402  (the reference checkout, on sys.path from here)
    from transformations import NativeAspectRatioResize, RandomCrop, RandomHorizontalFlip  # noqa: E402

    files = _tfrecords(args.images, args.tfrecords or args.images.rstrip("/") + "_tfrecords")
    transforms = [
        RandomHorizontalFlip(),
        RandomCrop(scale=(0.4, 1.0), ratio=(0.75, 1.33), min_num_pixels=224 * 224),
        NativeAspectRatioResize(square_size=224, patch_size=14),
    ]
    ds = load_dataset(files, 14, transforms).shuffle(4 * args.batch_size).repeat().batch(args.batch_size)
    it = iter(ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator())
    me = psutil.Process()
    for _ in range(args.batches):  # warm-up: tf.data's autotuning and the first decodes
        next(it)
    runs = []
    for _ in range(args.repeats):
        cpu0, t0 = sum(me.cpu_times()[:2]), time.perf_counter()
        for _ in range(args.batches):
            batch = next(it)
        runs.append((time.perf_counter() - t0, sum(me.cpu_times()[:2]) - cpu0))
    images = args.batches * args.batch_size
    wall = sorted(w for w, _ in runs)[len(runs) // 2]
    cpu = sorted(c for _, c in runs)[len(runs) // 2]
    result = {
        "pipeline": "reference tf.data",
        "images_per_sec": images / wall,
        "images_per_cpu_sec": images / cpu,
        "bytes_per_example": sum(x.nbytes for x in batch) / args.batch_size,
        "tensorflow": tf.__version__,
    }
    print(
        f"reference: {result['images_per_sec']:.0f} images/s, {result['images_per_cpu_sec']:.0f} per "
        f"CPU-second, {result['bytes_per_example'] / 1e3:.1f} KB per example"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
