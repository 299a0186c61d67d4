"""Record what the papers' own code computes, as small test fixtures, and run that code for comparisons.

Run by hand, outside CI, in the reference's own environment (this script does not import naraim):

  # the NARAIM authors' code (JAX/Flax + TensorFlow): tensorflow-cpu 2.16, jax 0.4.26, flax 0.8.2, optax
  # 0.2.2, einops (its requirements_nvidia.txt), a checkout of github.com/daniel-gallo/naraim with history
  python scripts/record_reference.py naraim --repo ../naraim-ref --photos ../shared/datasets/clothing-small
  # Apple's AIMv1 code (PyTorch): torch, timm and checkouts of github.com/apple/ml-l3m and apple/ml-aim
  python scripts/record_reference.py aim --l3m_repo ../ml-l3m --ml_aim_repo ../ml-aim
  # timm's own ViTs (PyTorch): torch, timm 1.0.31 and safetensors
  python scripts/record_reference.py timm

The references' modules are imported from their git history at the pinned commits (`git archive` into a
temporary folder: the trainer whose loss trained the NARAIM paper's models is older than the newest one);
none of their code is copied. Each part writes tests/fixtures/<part>_reference.npz and .json (the commits, the
settings and the figures measured while recording); tests/test_reference_fixtures.py compares naraim with
them. Two more commands run the NARAIM reference for scripts/compare_reference_training.py: `tfrecords` (its
tfrecords.py on an image folder) and `train` (its main.py, with its TensorBoard scalars recorded to JSON).
"""

import argparse
import contextlib
import glob
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NARAIM_REF_COMMIT = "61ceba4"  # daniel-gallo/naraim HEAD: data pipeline, model, masks, schedule, probe head
NARAIM_TRAIN_COMMIT = "f8d1e65^"  # its trainer before "Fix MSE loss": the loss its Table 1 models trained on
L3M_COMMIT = "e6376a3"  # apple/ml-l3m HEAD (configs/aimv1/001_aim_v1_600M.yaml)
ML_AIM_COMMIT = "bd9e068"  # apple/ml-aim HEAD (aim-v1)
# Ten photos of clothing-small (CC0) from tall to wide: width/height 0.43 .. 2.22.
PHOTOS = (
    "train/outwear/37f416aa-b0b7-47e6-a4aa-ef0aad2f39ec.jpg",
    "train/pants/c4b9d4f5-2a30-481a-8cb5-51ae0fd189de.jpg",
    "train/hat/73ac436f-d222-491e-8603-70bf6f1f6ad9.jpg",
    "train/hat/a26fcf8f-e1a3-4607-9854-9afef6745c86.jpg",
    "train/hat/a8f612a6-a966-451b-9dd3-364a4b200dc1.jpg",
    "train/hat/a47cd387-993a-4e23-b8a8-259d036cf37b.jpg",
    "train/t-shirt/16e59add-f4dc-42ed-9d0b-117b82ade746.jpg",
    "train/hat/6a09b559-bca5-444f-b433-e3aff6197b5c.jpg",
    "train/hat/e3c2ae0c-6ca2-49a9-9bb4-e2e9346828b0.jpg",
    "train/hat/ceb6ea8b-5289-4305-a52b-b4b44d3beeb9.jpg",
)
CROPPED = 3  # the first photos also recorded through the reference's seeded RandomCrop
GRIDS = ((16, 16), (12, 21), (7, 36), (1, 4))  # position tables recorded for these (rows, cols)
MASK_CASES = ((1, 16), (5, 16), (15, 16), (3, 9), (8, 9))  # (prefix, real tokens) at a budget of 16


class Failure(Exception):
    """One line for the user, then exit status 1."""


class ArgumentParser(argparse.ArgumentParser):
    """A bad argument is one line and exit status 1 (this script does not import naraim.cli)."""

    def error(self, message: str):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(1)


def checkout(repo: str, commit: str) -> str:
    """A temporary folder holding the Python files of `repo` at `commit` (git archive: no work tree is
    touched; notebooks and data are left out)."""
    if not os.path.exists(repo):
        raise Failure(f"{repo} does not exist: pass a git checkout of the reference")
    folder = tempfile.mkdtemp(prefix=f"ref_{commit.replace('^', '_')}_")
    try:
        names = subprocess.run(
            ["git", "-C", repo, "ls-tree", "-r", "--name-only", commit],
            capture_output=True,
            check=True,
            text=True,
        ).stdout.split()
        python = [n for n in names if n.endswith(".py")]
        data = subprocess.run(
            ["git", "-C", repo, "archive", commit, "--", *python], capture_output=True, check=True
        )
        data = data.stdout
    except subprocess.CalledProcessError as e:
        raise Failure(f"git archive {commit} failed in {repo}: {e.stderr.decode().strip()}") from None
    tarfile.open(fileobj=io.BytesIO(data)).extractall(folder, filter="data")
    return folder


def commit_id(repo: str, commit: str) -> str:
    return subprocess.run(
        ["git", "-C", repo, "rev-parse", commit], capture_output=True, text=True
    ).stdout.strip()


@contextlib.contextmanager
def imported_from(folder: str, *names: str):
    """Puts `folder` first on sys.path and forgets the modules `names` (and their submodules) before and
    after, so that two commits of the same repository can be imported one after the other."""

    def forget():
        for key in list(sys.modules):
            if key.split(".")[0] in names:
                del sys.modules[key]

    forget()
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.path.remove(folder)
        forget()


@contextlib.contextmanager
def tensorboard_stub(scalars: list):
    """The NARAIM trainer writes TensorBoard logs through torch.utils.tensorboard: while its module is
    imported in this block, a stand-in SummaryWriter that keeps (tag, value, step) of every add_scalar in
    `scalars` (no torch needed; the stand-in modules are removed after the block)."""

    class SummaryWriter:
        def __init__(self, *args, **kwargs):
            del args, kwargs

        def add_scalar(self, tag, value, step):
            scalars.append((str(tag), float(value), int(step)))

        def __getattr__(self, name):  # add_figure, add_image, flush, close: nothing to keep
            return lambda *args, **kwargs: None

    modules = {name: types.ModuleType(name) for name in ("torch", "torch.utils", "torch.utils.tensorboard")}
    modules["torch.utils.tensorboard"].SummaryWriter = SummaryWriter
    modules["torch"].Tensor = type("Tensor", (), {})  # libraries that probe for torch ask for this name
    modules["torch"].utils = modules["torch.utils"]
    modules["torch.utils"].tensorboard = modules["torch.utils.tensorboard"]
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name in modules:
            del sys.modules[name]


# ---------------------------------------------------------------------------------------------- NARAIM


def _example(tf, image_bytes: bytes, path: str, label: int) -> bytes:
    """A serialized tf.train.Example with the features the reference's dataset.py parses."""
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes])),
        "path": tf.train.Feature(bytes_list=tf.train.BytesList(value=[path.encode()])),
        "class_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "image_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[0])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _pixels(x) -> np.ndarray:
    """Reference floats in [0, 1] -> uint8 grey levels (rounded; TF's bicubic overshoots [0, 1] near edges:
    the fixture's JSON says by how much)."""
    return np.clip(np.round(np.asarray(x, np.float64) * 255.0), 0, 255).astype(np.uint8)


def _overshoot(x) -> tuple[float, float]:
    """(share of values outside [0, 1], largest distance outside it in grey levels) of reference floats."""
    x = np.asarray(x, np.float64)
    outside = np.maximum(x - 1.0, 0.0) + np.maximum(-x, 0.0)
    return float((outside > 0).mean()), float(outside.max() * 255.0)


def record_naraim(args) -> None:
    tree = checkout(args.repo, NARAIM_REF_COMMIT)
    train_tree = checkout(args.repo, NARAIM_TRAIN_COMMIT)
    import tensorflow as tf  # noqa: PLC0415  (the reference's environment only)

    scalars: list = []
    out, meta = {}, {"commits": {}, "photos": list(PHOTOS), "settings": {}, "measured": {}}
    with imported_from(tree, "dataset", "transformations", "model", "exponential_scheduler", "trainer"):
        import dataset  # noqa: PLC0415
        import exponential_scheduler  # noqa: PLC0415
        import jax  # noqa: PLC0415
        import jax.numpy as jnp  # noqa: PLC0415

        with tensorboard_stub(scalars):
            import trainer as head_trainer  # noqa: PLC0415
        from model import classification, positional  # noqa: PLC0415

        _bare_package("transformations", os.path.join(tree, "transformations"))  # its __init__ needs timm
        from transformations.native_aspect_ratio_resize import NativeAspectRatioResize  # noqa: PLC0415
        from transformations.random_crop import RandomCrop  # noqa: PLC0415

        resize = NativeAspectRatioResize(square_size=224, patch_size=14)
        patches, coords, lengths, prefixes, masks, loss_masks, reencoded, overshoot = (
            [],
            [],
            [],
            [],
            [],
            [],
            [],
            [],
        )
        tf.experimental.numpy.random.seed(args.seed)
        for path in PHOTOS:
            raw = open(os.path.join(args.photos, path), "rb").read()
            p, c, _, attention, loss_mask = dataset.read_labeled_tfrecord(
                _example(tf, raw, path, 0), 14, [resize]
            )
            c, loss_mask = np.asarray(c), np.asarray(loss_mask)
            n = 1 + int(np.any(c != 0, axis=-1).sum())  # padding tokens sit at (0, 0) after the first patch
            k = int(np.argmax(loss_mask)) + 1  # the mask is 0 for the k - 1 predictions inside the prefix
            patches.append(_pixels(p))
            overshoot.append(_overshoot(np.asarray(p)[:n]))
            coords.append(c.astype(np.int16))
            lengths.append(n)
            prefixes.append(k)
            masks.append(np.packbits(np.asarray(attention, bool)))
            loss_masks.append(loss_mask.astype(np.uint8))
            # the reference's TFRecords re-encode every image as a quality-95 JPEG (tfrecords.py): the same
            # photo through that path, to measure what it changes
            decoded = tf.image.decode_jpeg(raw, channels=3)
            again = tf.io.encode_jpeg(decoded).numpy()
            q, *_ = dataset.read_labeled_tfrecord(_example(tf, again, path, 0), 14, [resize])
            reencoded.append(np.abs(np.asarray(q) - np.asarray(p))[:n].mean() * 255.0)
        # its resize alone: the first photos decoded by PIL (libjpeg-turbo, as naraim) instead of TensorFlow,
        # and how far the two decoders are apart
        from PIL import Image  # noqa: PLC0415

        decoders, resize_only = [], []
        for i, path in enumerate(PHOTOS):
            pil = np.asarray(Image.open(os.path.join(args.photos, path)).convert("RGB"))
            tf_pixels = tf.image.decode_jpeg(open(os.path.join(args.photos, path), "rb").read(), 3).numpy()
            decoders.append(np.abs(pil.astype(np.int16) - tf_pixels).mean())
            if i < CROPPED:
                p, _ = dataset.patchify(resize(tf.constant(pil, tf.float32) / 255.0), 14)
                resize_only.append(np.pad(_pixels(p), [(0, 256 - len(p)), (0, 0)]))
        out["resize_only_patches"] = np.stack(resize_only)
        meta["measured"]["decoder_mean_abs_grey_levels"] = [round(float(x), 3) for x in decoders]
        out["photo_patches"] = np.stack(patches)  # [10, 256, 588] uint8
        out["photo_coords"] = np.stack(coords)  # [10, 256, 2]
        out["photo_length"] = np.asarray(lengths, np.int32)
        out["photo_prefix"] = np.asarray(prefixes, np.int32)
        out["photo_attention_bits"] = np.stack(masks)  # packbits of [256, 256] bool
        out["photo_loss_mask"] = np.stack(loss_masks)  # [10, 256]
        meta["measured"]["reencode_mean_abs_grey_levels"] = [round(float(x), 3) for x in reencoded]
        meta["measured"]["overshoot_share"] = [round(a, 5) for a, _ in overshoot]
        meta["measured"]["overshoot_max_grey_levels"] = [round(b, 2) for _, b in overshoot]

        # RandomCrop with a seed: the crop box it drew, and the crop through NativeAspectRatioResize
        crop = RandomCrop(scale=(0.4, 1.0), ratio=(0.75, 1.33), min_num_pixels=224 * 224)
        boxes, crop_patches, crop_coords = [], [], []
        tf.random.set_seed(args.seed)
        for path in PHOTOS[:CROPPED]:
            image = tf.cast(
                tf.image.decode_jpeg(open(os.path.join(args.photos, path), "rb").read(), 3), tf.float32
            )
            image = image / 255.0
            i, j, h, w = (int(np.asarray(v)) for v in crop.get_params(image))
            boxes.append((i, j, h, w))
            p, c = dataset.patchify(resize(image[i : i + h, j : j + w]), 14)
            crop_patches.append(np.pad(_pixels(p), [(0, 256 - len(p)), (0, 0)]))
            crop_coords.append(np.pad(np.asarray(c, np.int16), [(0, 256 - len(c)), (0, 0)]))
        out["crop_box"] = np.asarray(boxes, np.int32)  # (top, left, height, width) in decoded pixels
        out["crop_patches"] = np.stack(crop_patches)
        out["crop_coords"] = np.stack(crop_coords)

        # position tables: absolute sin-cos (D = 32) and fractional (its Dense layers, seeded) per grid
        dim = 32
        absolute, fractional, grid_coords = [], [], []
        table = positional.get_2d_positional_embedding(dim, 40, 40)
        frac = positional.FractionalPositionalEncoding()
        for rows, cols in GRIDS:
            rc = np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"), -1).reshape(-1, 2)
            rc = np.pad(rc, [(0, 256 - len(rc)), (0, 0)])  # padding tokens at (0, 0), as dataset.py pads
            grid_coords.append(rc.astype(np.int16))
            absolute.append(np.asarray(table[rc[:, 0], rc[:, 1]], np.float32))
        x0 = jnp.zeros((len(GRIDS), 256, dim))
        frac_params = frac.init(jax.random.PRNGKey(args.seed), x0, jnp.asarray(np.stack(grid_coords)))
        fractional = np.asarray(frac.apply(frac_params, x0, jnp.asarray(np.stack(grid_coords))), np.float32)
        out["grid_coords"] = np.stack(grid_coords)
        out["absolute_table"] = np.stack(absolute)  # [grids, 256, 32]
        out["fractional_out"] = fractional  # [grids, 256, 32] (NaN rows: the reference on a one-row grid)
        for name, leaf in jax.tree_util.tree_flatten_with_path(frac_params["params"])[0]:
            out["fractional_param" + jax.tree_util.keystr(name)] = np.asarray(leaf, np.float32)

        # attention and loss masks for given prefixes
        for k, n in MASK_CASES:
            out[f"mask_attention_{k}_{n}"] = np.asarray(dataset.get_attention_matrix(k, 16), np.uint8)
            out[f"mask_loss_{k}_{n}"] = np.asarray(dataset.get_loss_mask(k, n, 16), np.uint8)

        # the schedule: its warmup / exponential decay / cooldown at every step of a 200-step run
        fn = exponential_scheduler.warmup_exponential_decay_cooldown_scheduler(20, 1e-3, 150, 0.1, 30, 0.0)
        out["schedule"] = np.asarray(jax.vmap(fn)(jnp.arange(201)), np.float32)
        meta["settings"]["schedule"] = dict(
            total=200, warmup=20, decay_steps=150, rate=0.1, cooldown=30, peak=1e-3
        )

        # the probe head (model/classification.py) on fixed features
        head = classification.ClassificationHead(dtype=jnp.float32, num_heads=4, num_categories=5)
        features = jax.random.normal(jax.random.PRNGKey(args.seed + 1), (3, 10, dim))
        head_params = head.init(jax.random.PRNGKey(args.seed + 2), features)
        out["probe_features"] = np.asarray(features, np.float32)
        out["probe_logits"] = np.asarray(head.apply(head_params, features), np.float32)
        for name, leaf in jax.tree_util.tree_flatten_with_path(head_params["params"])[0]:
            out["probe_param" + jax.tree_util.keystr(name)] = np.asarray(leaf, np.float32)

        # targets (its train_model normalises batch.patches) and both losses on fixed predictions
        batch = _loss_batch(dataset.get_loss_mask, args.seed)
        out.update({f"loss_{k}": np.asarray(v) for k, v in batch.items()})
        labels = _reference_targets(head_trainer, batch, jnp)
        out["loss_targets"] = np.asarray(labels, np.float32)
        out["loss_head"] = np.float32(_reference_loss(head_trainer, batch, labels, jnp))
        meta["commits"]["naraim_ref"] = commit_id(args.repo, NARAIM_REF_COMMIT)
    with imported_from(train_tree, "trainer", "dataset", "model", "exponential_scheduler", "transformations"):
        _bare_package("transformations", os.path.join(train_tree, "transformations"))
        with tensorboard_stub(scalars):
            import trainer as old_trainer  # noqa: PLC0415

        out["loss_before_f8d1e65"] = np.float32(_reference_loss(old_trainer, batch, labels, jnp))
        meta["commits"]["naraim_ref_training_loss"] = commit_id(args.repo, NARAIM_TRAIN_COMMIT)
    write_fixture(args.out, "naraim", out, meta)


def _loss_batch(get_loss_mask, seed: int) -> dict:
    """Four images of a 16-token budget: lengths 16, 12, 9, 16 with prefixes 3, 11 (= n - 1), 1, 15; uint8
    pixel patches of 2 x 2 x 3 values (zero padding), their loss masks by the reference's get_loss_mask, and
    fixed predictions."""
    rng = np.random.default_rng(seed)
    lengths, prefixes = np.array([16, 12, 9, 16]), np.array([3, 11, 1, 15])
    pixels = rng.integers(0, 256, (4, 16, 12))
    pixels[np.arange(16)[None, :] >= lengths[:, None]] = 0
    loss_masks = np.stack(
        [np.asarray(get_loss_mask(k, n, 16)) for k, n in zip(prefixes, lengths, strict=True)]
    )
    return {
        "pixels": pixels.astype(np.uint8),
        "length": lengths.astype(np.int32),
        "prefix": prefixes.astype(np.int32),
        "loss_masks": loss_masks.astype(np.float32),
        "preds": rng.normal(size=(4, 16, 12)).astype(np.float32),
    }


class _Stub:
    """What the reference's Trainer methods read from `self`, and a model that returns fixed predictions."""

    def __init__(self, preds):
        self.model = types.SimpleNamespace(apply=lambda *args, **kwargs: preds)


def _reference_targets(trainer_module, batch: dict, jnp):
    """The normalised targets its Trainer.train_model computes from batch.patches (norm_pix_loss 'True'),
    caught by running one step of it with the step itself replaced."""
    caught = {}
    self = trainer_module.Trainer.__new__(trainer_module.Trainer)
    self.model_type, self.norm_pix_loss, self.profile = "autoregressor", "True", False
    self.state = types.SimpleNamespace(step=0)
    self.max_num_iterations, self.log_every_n_steps, self.eval_every_n_steps = 1, 10**9, 10**9
    self.rng, self.num_minibatches = __import__("jax").random.PRNGKey(0), 1
    self.logger = types.SimpleNamespace(add_scalar=lambda *a: None, flush=lambda: None, close=lambda: None)
    self.loss_autoregressor = lambda *a, **k: None

    def train_step(loss_fn, state, step_rng, batch, num_minibatches, metrics):
        caught["labels"] = batch.labels
        return state, {}

    self.train_step = train_step
    patches = jnp.asarray(batch["pixels"], jnp.float32) / 255.0
    n = patches.shape[1]
    item = (
        patches,
        jnp.zeros((4, n, 2), jnp.int32),
        patches,
        jnp.ones((4, n, n)),
        jnp.asarray(batch["loss_masks"]),
    )
    trainer_module.Trainer.train_model(self, [item], None)
    return caught["labels"]


def _reference_loss(trainer_module, batch: dict, labels, jnp) -> float:
    """Its Trainer.loss_autoregressor on the fixed predictions (its model replaced by them)."""
    batch_cls = trainer_module.Batch
    b = batch_cls(
        patches=jnp.asarray(batch["pixels"], jnp.float32) / 255.0,
        patch_coordinates=None,
        labels=labels,
        attention_masks=None,
        loss_masks=jnp.asarray(batch["loss_masks"]),
    )
    loss, _ = trainer_module.Trainer.loss_autoregressor(
        _Stub(jnp.asarray(batch["preds"])), None, None, b, False
    )
    return float(loss)


def _images(folder: str, split: str, classes: list[str]) -> list[tuple[str, int]]:
    """(path, class id) of every file of an image folder's split, class folders and files sorted."""
    root = os.path.join(folder, split)
    return [
        (os.path.join(root, c, name), classes.index(c))
        for c in sorted(os.listdir(root))
        for name in sorted(os.listdir(os.path.join(root, c)))
    ]


def write_tfrecords(args) -> None:
    """The reference's TFRecords of an image folder's train and validation splits, written with its
    tfrecords.py (create_example, which re-encodes each image as a quality-95 JPEG, 512 images a file), and
    the same re-encoded JPEG bytes as an image folder (OUT/images) for naraim, so both train on one data."""
    tree = checkout(args.repo, NARAIM_REF_COMMIT)
    import tensorflow as tf  # noqa: PLC0415  (the reference's environment only)

    classes = sorted(os.listdir(os.path.join(args.data, "train")))
    with imported_from(tree, "tfrecords"):
        import tfrecords  # noqa: PLC0415

        for split, short in (("train", "train"), ("validation", "val")):
            items = _images(args.data, split, classes)
            os.makedirs(os.path.join(args.out, "tfrecords", short), exist_ok=True)
            for start in range(0, len(items), 512):
                chunk = items[start : start + 512]
                name = os.path.join(
                    args.out, "tfrecords", short, f"file_{start // 512:02d}-{len(chunk)}.tfrec"
                )
                with tf.io.TFRecordWriter(name) as writer:
                    for i, (path, label) in enumerate(chunk):
                        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
                        sample = {"path": path, "class_id": label, "image_id": start + i}
                        example = tfrecords.create_example(image, path, sample)
                        writer.write(example.SerializeToString())
                        jpeg = example.features.feature["image"].bytes_list.value[0]
                        target = os.path.join(
                            args.out, "images", split, classes[label], os.path.basename(path)
                        )
                        os.makedirs(os.path.dirname(target), exist_ok=True)
                        with open(target, "wb") as f:
                            f.write(jpeg)
            print(f"{split}: {len(items)} images")


def train_reference(args) -> None:
    """The reference's Trainer at the commit whose loss trained its paper's models, on TFRecords made by
    write_tfrecords, with its own argument defaults (main.parse_args) and its data pipeline as its main.py
    assembles it; every TensorBoard scalar it logs goes to OUT as JSON."""
    tree = checkout(args.repo, NARAIM_TRAIN_COMMIT)
    import tensorflow as tf  # noqa: PLC0415  (the reference's environment only)

    scalars: list = []
    argv = [
        "main.py",
        *("--batch_size", str(args.batch_size), "--seed", str(args.seed), "--dtype", "float32"),
        *("--max_num_iterations", str(args.steps), "--warmup_steps", str(args.warmup)),
        *("--cooldown_steps", str(args.cooldown), "--log_every_n_steps", str(args.log_every)),
        *("--eval_every_n_steps", str(args.eval_every), "--num_layers", str(args.depth)),
        *("--num_heads", str(args.heads), "--embedding_dimension", str(args.width)),
        *("--hidden_dimension", str(4 * args.width), "--n_images_to_visualize", "0"),
        *("--checkpoints_path", tempfile.mkdtemp(), "--tensorboard_path", tempfile.mkdtemp()),
        *("--train_transformations", "native_aspect_ratio_resize", "random_horizontal_flip"),
        *("--validation_transformations", "native_aspect_ratio_resize"),
    ]
    with imported_from(
        tree, "main", "dataset", "trainer", "model", "transformations", "exponential_scheduler"
    ):
        _bare_package("transformations", os.path.join(tree, "transformations"))  # its __init__ needs timm
        import transformations  # noqa: PLC0415
        from transformations import native_aspect_ratio_resize, random_horizontal_flip  # noqa: PLC0415

        transformations.NativeAspectRatioResize = native_aspect_ratio_resize.NativeAspectRatioResize
        transformations.RandomHorizontalFlip = random_horizontal_flip.RandomHorizontalFlip
        for unused in ("AutoAugment", "RandomCrop", "RandomResizedCrop", "SquareResize"):
            setattr(transformations, unused, type(unused, (), {}))  # main.py imports them; not used here
        with tensorboard_stub(scalars):
            import main  # noqa: PLC0415
        from dataset import load_dataset, prefetch  # noqa: PLC0415

        sys.argv = argv
        ref_args, model_hparams, trainer_kwargs = main.parse_args()
        tf.random.set_seed(args.seed)
        files = lambda split: sorted(glob.glob(os.path.join(args.tfrecords, split, "*.tfrec")))  # noqa: E731
        train_tf = [main.get_transformation(t) for t in ref_args.train_transformations]
        val_tf = [main.get_transformation(t) for t in ref_args.validation_transformations]
        train_ds = prefetch(
            load_dataset(files("train"), ref_args.patch_size, train_tf)
            .shuffle(4 * ref_args.batch_size)
            .repeat()
            .batch(ref_args.batch_size)
            .prefetch(tf.data.AUTOTUNE)
            .as_numpy_iterator()
        )
        val_ds = load_dataset(files("val"), ref_args.patch_size, val_tf).batch(
            ref_args.batch_size, drop_remainder=True
        )
        trainer_kwargs["dummy_batch"] = next(iter(train_ds))
        trainer = main.Trainer(model_hparams=model_hparams, **trainer_kwargs)
        trainer.train_model(train_ds, val_ds.prefetch(tf.data.AUTOTUNE))
    result = {
        "commit": commit_id(args.repo, NARAIM_TRAIN_COMMIT),
        "argv": argv[1:],
        "train_loss": [(step + 1, value) for tag, value, step in scalars if tag == "loss/train"],
        "val_loss": [(step + 1, value) for tag, value, step in scalars if tag == "loss/val"],
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


# ------------------------------------------------------------------------------------------------ AIM


def record_aim(args) -> None:
    l3m_tree = checkout(args.l3m_repo, L3M_COMMIT)
    aim_tree = checkout(args.ml_aim_repo, ML_AIM_COMMIT)
    import torch  # noqa: PLC0415  (the AIM environment only)

    out, meta = {}, {"commits": {}, "settings": {}, "measured": {}}
    torch.manual_seed(args.seed)
    with imported_from(os.path.join(l3m_tree, "src"), "l3m"):
        _bare_package("l3m", os.path.join(l3m_tree, "src", "l3m"))
        from l3m.loss.mae_loss import RasterPixelLoss  # noqa: PLC0415
        from l3m.model.layers.attention import GenericAttention  # noqa: PLC0415
        from l3m.model.trunks.transformer import Transformer  # noqa: PLC0415

        # targets and loss: RasterPixelLoss on images standardised as l3m's eval transform does
        rng = np.random.default_rng(args.seed)
        pixels = rng.integers(0, 256, (2, 28, 28, 3), dtype=np.uint8)
        mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
        image = torch.tensor(((pixels / 255.0 - mean) / std).transpose(0, 3, 1, 2), dtype=torch.float32)
        loss_fn = RasterPixelLoss(
            patch_size=14, image_size=28, norm_pix_loss=True, read_key="pred", mask_read_key="mask"
        )
        preds = rng.normal(size=(2, 4, 588)).astype(np.float32)
        mask = np.array([[False, False, True, True], [False, True, True, True]])
        loss, _ = loss_fn({"pred": torch.tensor(preds), "image": image, "mask": torch.tensor(mask)})
        out.update(
            aim_loss_pixels=pixels, aim_loss_preds=preds, aim_loss_mask=mask, aim_loss=np.float32(loss)
        )

        # q/k/v initialisation: a two-block trunk with its xavier_uniform style, q, k, v as three Linear(D, D)
        dim = 256

        def attn(use_bias: bool):
            return GenericAttention(dim=dim, num_heads=4, qkv_bias=False, use_bias=use_bias)

        trunk = Transformer(
            read_key="x", write_key="x", attn_target=attn, embed_dim=dim, num_blocks=2, use_bias=False
        )
        stats = {}
        for name, param in trunk.named_parameters():
            if name.endswith("weight") and param.ndim == 2:
                w = param.detach()
                stats[name] = (float(w.abs().max()), float(w.std()), list(w.shape))
        meta["measured"]["l3m_init"] = stats
        meta["settings"]["l3m_init"] = dict(dim=dim, heads=4, blocks=2)
        meta["commits"]["l3m"] = commit_id(args.l3m_repo, L3M_COMMIT)
    with imported_from(os.path.join(aim_tree, "aim-v1"), "aim"):
        from aim.v1.torch.layers import AttentionPoolingClassifier  # noqa: PLC0415

        head = AttentionPoolingClassifier(dim=64, out_features=5, num_heads=4)
        head.bn.running_mean.normal_()
        head.bn.running_var.uniform_(0.5, 2.0)
        head.eval()
        features = torch.randn(3, 10, 64)
        with torch.no_grad():
            out["aim_probe_logits"] = head(features).numpy()
        out["aim_probe_features"] = features.numpy()
        for name, tensor in head.state_dict().items():
            if tensor.dtype.is_floating_point:
                out[f"aim_probe_param.{name}"] = tensor.numpy()
        meta["commits"]["ml_aim"] = commit_id(args.ml_aim_repo, ML_AIM_COMMIT)
    write_fixture(args.out, "aim", out, meta)


def record_aim_v1(args) -> None:
    """ml-aim's AIMv1 torch model at two blocks of width 16 (naraim's Nano/14), every parameter drawn at
    random: its weights, a 2x3-patch batch, each block's output, the final-normed tokens and the probe
    head's logits on the mean of both blocks (tests/test_import.py imports the weights and must reproduce
    them)."""
    aim_tree = checkout(args.ml_aim_repo, ML_AIM_COMMIT)
    import torch  # noqa: PLC0415  (the AIM environment only)

    torch.manual_seed(args.seed)
    with imported_from(os.path.join(aim_tree, "aim-v1"), "aim"):
        from aim.v1.torch import models  # noqa: PLC0415

        pre, trunk, head = models._aim(
            img_size=(28, 42),
            patch_size=14,
            embed_dim=16,
            num_blocks=2,
            num_heads=2,
            probe_layers=2,
            num_classes=5,
            mlp_hidden_dim=32,
        )
        model = models.AIM(pre, trunk, head).eval()
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                if tensor.dtype.is_floating_point:
                    tensor.copy_(
                        torch.rand_like(tensor) + 0.5
                        if name.endswith("running_var")
                        else tensor + 0.2 * torch.randn_like(tensor)
                    )
            rng = np.random.default_rng(args.seed)
            pixels = rng.integers(0, 256, (2, 28, 42, 3), dtype=np.uint8)
            mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
            image = torch.tensor(((pixels / 255.0 - mean) / std).transpose(0, 3, 1, 2), dtype=torch.float32)
            tokens, blocks = model.trunk(model.preprocessor(image))
            logits = model.head(tokens)
            encoded = model.trunk.post_trunk_norm(blocks[-1])
        out = {"pixels": pixels, "encoded": encoded.numpy(), "logits": logits.numpy()}
        out.update({f"block_{i}": b.numpy() for i, b in enumerate(blocks)})
        out.update(
            {f"param.{k}": v.numpy() for k, v in model.state_dict().items() if v.dtype.is_floating_point}
        )
        meta = {
            "commits": {"ml_aim": commit_id(args.ml_aim_repo, ML_AIM_COMMIT)},
            "settings": {
                "img_size": [28, 42],
                "patch_size": 14,
                "embed_dim": 16,
                "num_blocks": 2,
                "num_heads": 2,
                "mlp_hidden_dim": 32,
                "probe_layers": [0, 1],
                "num_classes": 5,
                "seed": args.seed,
            },
        }
    write_fixture(args.out, "aim_v1", out, meta)


NANO_8 = dict(patch_size=8, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0)  # naraim's Nano/8
# case -> (architecture, model_args, image sizes (H, W) whose features are recorded)
TIMM_CASES = {
    "siglip_gap": ("vit_base_patch16_siglip_gap_224", dict(NANO_8, img_size=(24, 32)), ((24, 32),)),
    "patch_norm_no_bias": (
        "vit_base_patch16_224",
        dict(
            NANO_8,
            img_size=32,
            class_token=False,
            global_pool="avg",
            fc_norm=False,
            qkv_bias=False,
            proj_bias=False,
            embed_norm_layer="layernorm",
            act_layer="gelu_tanh",
        ),
        ((32, 32),),
    ),
    "eva_rope": (
        "vit_medium_patch16_rope_reg1_gap_256",
        dict(
            NANO_8,
            img_size=(24, 32),
            qkv_bias=True,
            qkv_fused=False,
            init_values=None,
            class_token=False,
            num_reg_tokens=0,
            use_abs_pos_emb=False,
            use_rot_pos_emb=True,
            rope_type="cat",
            rope_temperature=10000.0,
            rope_grid_indexing="ij",
            ref_feat_shape=None,
            global_pool="avg",
            use_fc_norm=False,
            use_post_transformer_norm=True,
            dynamic_img_size=True,
            num_classes=0,
        ),
        ((24, 32), (40, 16)),
    ),
    "class_token": (
        "vit_base_patch16_224",
        dict(NANO_8, img_size=16, num_classes=0),
        (),
    ),  # the import must refuse it
}


def record_timm(args) -> None:
    """timm's own VisionTransformer and Eva at naraim's Nano/8 size, every parameter drawn at random, saved
    with timm's save_for_hf (config.json + model.safetensors under OUT/timm_import/<case>), with their
    forward_features of seeded images normalised by each model's pretrained_cfg, and torch's bilinear
    resampling of the SigLIP model's pos_embed to a 5 x 2 grid (tests/test_interop.py imports them)."""
    import timm  # noqa: PLC0415  (the timm environment only)
    import torch  # noqa: PLC0415
    from timm.models import save_for_hf  # noqa: PLC0415

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    out, settings = {}, {}
    for case, (architecture, model_args, sizes) in TIMM_CASES.items():
        folder = os.path.join(args.out, "timm_import", case)
        model = timm.create_model(architecture, pretrained=False, **model_args)
        save_for_hf(model, folder, model_args=model_args, safe_serialization=True)
        # as users build it from the folder (create_model drops None-valued arguments; local-dir does not)
        model = timm.create_model(f"local-dir:{os.path.abspath(folder)}", pretrained=False).eval()
        with torch.no_grad():
            for tensor in model.state_dict().values():
                if tensor.dtype.is_floating_point:
                    tensor.copy_(tensor + 0.2 * torch.randn_like(tensor))
            save_for_hf(model, folder, model_args=model_args, safe_serialization=True)
            mean, std = (np.array(model.pretrained_cfg[k]) for k in ("mean", "std"))
            for height, width in sizes:
                pixels = rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8)
                x = torch.tensor(((pixels / 255.0 - mean) / std).transpose(0, 3, 1, 2), dtype=torch.float32)
                out[f"{case}.{height}x{width}.pixels"] = pixels
                out[f"{case}.{height}x{width}.features"] = model.forward_features(x).numpy()
            if case == "siglip_gap":
                table = model.pos_embed.reshape(1, 3, 4, -1).permute(0, 3, 1, 2)
                resized = torch.nn.functional.interpolate(
                    table, size=(5, 2), mode="bilinear", align_corners=False
                )
                out[f"{case}.pos_embed_5x2"] = resized.permute(0, 2, 3, 1).reshape(10, -1).numpy()
        settings[case] = {"architecture": architecture, "model_args": model_args, "sizes": sizes}
    meta = {"timm": timm.__version__, "torch": torch.__version__, "seed": args.seed, "cases": settings}
    write_fixture(args.out, "timm", out, meta)


def _bare_package(name: str, path: str) -> None:
    """Registers package `name` at `path`, and every package below it, without running their __init__
    files (l3m's import its whole stack; the NARAIM reference's transformations/ imports timm): only the
    modules asked for, and what they import, are loaded."""
    for folder, _, files in os.walk(path):
        if "__init__.py" in files:
            relative = os.path.relpath(folder, path)
            dotted = ".".join([name, *([] if relative == "." else relative.split(os.sep))])
            module = types.ModuleType(dotted)
            module.__path__ = [folder]
            sys.modules[dotted] = module


def write_fixture(folder: str, part: str, arrays: dict, meta: dict) -> None:
    os.makedirs(folder, exist_ok=True)
    np.savez_compressed(os.path.join(folder, f"{part}_reference.npz"), **arrays)
    with open(os.path.join(folder, f"{part}_reference.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(folder, f"{part}_reference.{e}")) for e in ("npz", "json"))
    print(f"wrote {folder}/{part}_reference.npz and .json ({size / 1e6:.2f} MB)")


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    naraim = sub.add_parser("naraim", help="record the NARAIM reference's outputs")
    naraim.add_argument("--repo", required=True, help="a git checkout of github.com/daniel-gallo/naraim")
    naraim.add_argument("--photos", required=True, help="the clothing-small folder")
    aim = sub.add_parser("aim", help="record l3m's and ml-aim's outputs")
    aim.add_argument("--l3m_repo", required=True, help="a git checkout of github.com/apple/ml-l3m")
    aim.add_argument("--ml_aim_repo", required=True, help="a git checkout of github.com/apple/ml-aim")
    for p in (naraim, aim):
        p.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures"), help="fixture folder")
        p.add_argument("--seed", type=int, default=0, help="seeds the reference's random draws")
    aim_v1 = sub.add_parser(
        "aim_v1", help="record ml-aim's AIMv1 model (tiny, random weights) for the import"
    )
    aim_v1.add_argument("--ml_aim_repo", required=True, help="a git checkout of github.com/apple/ml-aim")
    aim_v1.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures"), help="fixture folder")
    aim_v1.add_argument("--seed", type=int, default=0, help="seeds the weights and images")
    timm_part = sub.add_parser("timm", help="record timm's own ViTs (tiny, random weights) for the import")
    timm_part.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures"), help="fixture folder")
    timm_part.add_argument("--seed", type=int, default=0, help="seeds the weights and images")
    tf_records = sub.add_parser("tfrecords", help="the NARAIM reference's TFRecords of an image folder")
    tf_records.add_argument("--repo", required=True, help="a git checkout of github.com/daniel-gallo/naraim")
    tf_records.add_argument("--data", required=True, help="an image folder with train/ and validation/")
    tf_records.add_argument("--out", required=True, help="writes OUT/tfrecords/{train,val} and OUT/images")
    train = sub.add_parser("train", help="train the NARAIM reference (its trainer before f8d1e65)")
    train.add_argument("--repo", required=True, help="a git checkout of github.com/daniel-gallo/naraim")
    train.add_argument("--tfrecords", required=True, help="the tfrecords/ folder `tfrecords` wrote")
    train.add_argument("--out", required=True, help="the JSON file of its logged losses")
    for name, default in (("seed", 0), ("steps", 300), ("batch_size", 16), ("width", 128), ("depth", 4)):
        train.add_argument(f"--{name}", type=int, default=default, help=f"its --{name} (default {default})")
    for name, default in (
        ("heads", 4),
        ("warmup", 30),
        ("cooldown", 60),
        ("log_every", 10),
        ("eval_every", 100),
    ):
        train.add_argument(f"--{name}", type=int, default=default, help=f"default {default}")
    args = parser.parse_args()
    commands = {
        "naraim": record_naraim,
        "aim": record_aim,
        "aim_v1": record_aim_v1,
        "timm": record_timm,
        "tfrecords": write_tfrecords,
        "train": train_reference,
    }
    try:
        commands[args.command](args)
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
