import io
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from script_runner import run_script

from naraim.data import synthetic
from naraim.data.config import default_data_config
from naraim.data.pipeline import make_eval_iterator, make_train_iterator, num_classes
from naraim.data.prepare import write_arrayrecord
from naraim.data.sources import open_source
from naraim.data.sources.arrayrecord import decode_record, encode_record
from naraim.errors import UserError

CLOTHING = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "clothing-small"
needs_clothing = pytest.mark.skipif(
    not CLOTHING.is_dir(), reason="../shared/datasets/clothing-small not present"
)


def _cfg(source, **kw):
    cfg = default_data_config()
    cfg.source = source
    cfg.read_threads = 1
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_synthetic_is_deterministic_and_spread_over_aspect_ratios_and_classes():
    a, la = synthetic.generate(0, "train", 5)
    b, lb = synthetic.generate(0, "train", 5)
    np.testing.assert_array_equal(a, b)
    assert la == lb
    assert not np.array_equal(synthetic.generate(0, "validation", 5)[0], a)
    samples = [synthetic.generate(0, "train", i) for i in range(300)]
    aspects = np.array([im.shape[1] / im.shape[0] for im, _ in samples])
    sides = np.array([max(im.shape[:2]) for im, _ in samples])
    assert {round(x, 1) for x in aspects} >= {0.8, 1.0, 1.3, 1.8}  # 3:4, 1:1, 4:3, 16:9
    assert aspects.min() < 0.45 and aspects.max() > 2.2  # the tail towards 1:3 and 3:1
    assert sides.max() <= 320 and min(min(im.shape[:2]) for im, _ in samples) >= 8
    assert {label for _, label in samples} == set(range(10))
    assert all(im.dtype == np.uint8 and im.shape[2] == 3 for im, _ in samples)


def test_synthetic_proportion_classes_differ_only_by_proportions():
    # A circle squashed by 2 horizontally is the ellipse; a square squashed is a rectangle.
    g = np.linspace(-1.2, 1.2, 241)
    u, v = np.meshgrid(g, g, indexing="xy")
    circle = synthetic.shape_mask(0, u, v)
    ellipse = synthetic.shape_mask(1, u, v)
    np.testing.assert_array_equal(synthetic.shape_mask(0, u, v * 2), ellipse)
    assert circle.sum() > 1.9 * ellipse.sum()
    square, rect = synthetic.shape_mask(2, u, v), synthetic.shape_mask(3, u, v)
    assert 0.3 < rect.sum() / square.sum() < 0.9


def test_synthetic_source_through_the_pipeline():
    cfg = _cfg("synthetic")
    cfg.synthetic.train_size = 16
    assert num_classes(cfg) == 10
    batch = next(make_train_iterator(cfg, patch_size=14, global_batch_size=4, seed=0))
    assert batch["patches"].shape == (4, 256, 588) and (batch["label"] >= 0).all()


@needs_clothing
def test_folder_source_on_clothing_small():
    cfg = _cfg(f"folder:{CLOTHING}")
    sizes = {s: len(open_source(cfg, s)) for s in ("train", "validation", "test")}
    assert sizes == {"train": 3068, "validation": 341, "test": 372}
    src = open_source(cfg, "validation")
    assert src.classes == sorted(os.listdir(CLOTHING / "train")) and src.num_classes == 10
    raw, label, path, aspect_ratio = src[0]
    assert aspect_ratio is None  # from the decoded image
    assert isinstance(raw, bytes) and src.classes[label] == Path(path).parent.name
    assert open_source(cfg, "val").classes == src.classes  # 'val' is an alias of 'validation'
    cfg.image_size, cfg.max_tokens = 112, 64
    batch = next(iter(make_eval_iterator(cfg, split="validation", patch_size=14, global_batch_size=8)))
    assert batch["valid"].all() and (batch["label"] == 0).all()  # sorted: 'dress' comes first
    assert (np.abs(batch["aspect_ratio"] - 0.75) < 0.01).sum() >= 4  # most photos are 3:4 portraits


def _class_folder(root, classes=("b_cats", "a_dogs"), n=10):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (20 + i, 16), (i * 20, 0, 0)).save(root / c / f"{i}.png")
    return root


def test_folder_without_split_folders_holds_out_a_seeded_fraction(tmp_path):
    cfg = _cfg(f"folder:{_class_folder(tmp_path)}", holdout_fraction=0.2)
    train, val = open_source(cfg, "train"), open_source(cfg, "validation")
    assert train.classes == ["a_dogs", "b_cats"] and len(train) == 16 and len(val) == 4
    names = lambda s: {s[i][2] for i in range(len(s))}  # noqa: E731
    assert not names(train) & names(val)
    assert sorted(val[i][1] for i in range(4)) == [0, 0, 1, 1]
    assert names(open_source(cfg, "validation")) == names(val)  # seeded
    cfg.holdout_seed = 1
    assert names(open_source(cfg, "validation")) != names(val)
    with pytest.raises(UserError, match="split 'test' does not exist"):
        open_source(cfg, "test")


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        open_source(_cfg(f"folder:{tmp_path / 'nope'}"), "train")
    (tmp_path / "train" / "x").mkdir(parents=True)
    with pytest.raises(UserError, match="no 'validation' split"):
        open_source(_cfg(f"folder:{tmp_path}"), "validation")
    with pytest.raises(UserError, match="has no files"):
        open_source(_cfg(f"folder:{tmp_path}"), "train")


def _png(seed, w, h):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    buf.seek(0)
    return buf


def _build_tiny_tfds(data_dir):
    import tensorflow_datasets as tfds

    class NaraimTinyImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.ClassLabel(names=["cat", "dog", "fox"]),
            }
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(7), "validation": self._generate_examples(5)}

        def _generate_examples(self, n):
            for i in range(n):  # encoded PNGs: building needs no TensorFlow
                yield i, {"image": _png(i, 30 + 10 * i, 40), "label": i % 3}

    NaraimTinyImages(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


@pytest.mark.slow
def test_tfds_source_reads_a_locally_built_dataset(tmp_path):
    _build_tiny_tfds(tmp_path)
    cfg = _cfg("tfds:naraim_tiny_images", tfds_data_dir=str(tmp_path), image_size=28, max_tokens=16)
    assert num_classes(cfg) == 3
    batches = list(make_eval_iterator(cfg, split="validation", patch_size=7, global_batch_size=4))
    valid = np.concatenate([b["valid"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])[valid]
    ratios = np.concatenate([b["aspect_ratio"] for b in batches])[valid]
    assert valid.sum() == 5 and sorted(labels.tolist()) == [0, 0, 1, 1, 2]
    np.testing.assert_allclose(np.sort(ratios), [(30 + 10 * i) / 40 for i in range(5)], rtol=1e-6)
    train = make_train_iterator(cfg, patch_size=7, global_batch_size=4, seed=0)
    assert next(train)["patches"].shape == (4, 16, 147)
    out = tmp_path / "ar"  # prepare_data converts a TFDS split too
    counts = write_arrayrecord("tfds:naraim_tiny_images", ["validation"], str(out), data_cfg=cfg)
    assert counts == {"validation": 5}
    src = open_source(_cfg(f"arrayrecord:{out}/{{split}}-*.array_record"), "validation")
    assert src.num_classes == 3 and sorted(src[i][1] for i in range(5)) == [0, 0, 1, 1, 2]
    assert json.loads((out / "dataset.json").read_text())["classes"] == ["cat", "dog", "fox"]
    with pytest.raises(UserError, match="not prepared"):
        open_source(_cfg("tfds:naraim_no_such_dataset", tfds_data_dir=str(tmp_path)), "train")


def test_arrayrecord_records_round_trip():
    record = encode_record(b"\x01\x02img", 7, "a/b.jpg", 0.75)
    assert decode_record(record) == (b"\x01\x02img", 7, "a/b.jpg", 0.75)
    assert decode_record(encode_record(b"x", 1, "n"))[3] is None  # unknown aspect ratio
    v1 = struct.pack("<iH", 3, 1) + b"n" + b"img"  # shards written before the aspect ratio was stored
    assert decode_record(v1, record_format=1) == (b"img", 3, "n", None)
    with pytest.raises(struct.error):
        decode_record(b"\x01\x02\x03")


@pytest.mark.slow
def test_prepare_data_writes_pre_resized_shards_the_pipeline_reads(tmp_path, capsys):
    root = tmp_path / "imgs"
    for split, n in (("train", 6), ("validation", 3)):
        for c in ("x", "y"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (300 + 100 * i, 200), (40 * i, 90, 0)).save(root / split / c / f"{i}.jpg")
    (root / "train" / "x" / "bad.jpg").write_bytes(b"junk")
    out = tmp_path / "ar"
    counts = write_arrayrecord(
        f"folder:{root}", ["train", "validation"], str(out), num_shards=2, max_area=20000, workers=2
    )
    assert counts == {"train": 12, "validation": 6}
    assert "preparing train: 13/13 images" in capsys.readouterr().err  # the bad file is counted as done
    cfg = _cfg(f"arrayrecord:{out}/{{split}}-*.array_record", image_size=56, max_tokens=16)
    src = open_source(cfg, "train")
    assert len(src) == 12 and src.num_classes == 2
    for i in range(len(src)):
        im = Image.open(io.BytesIO(src[i][0]))
        assert im.size[0] * im.size[1] <= 20000 * 1.01
        original_aspect = (300 + 100 * int(Path(src[i][2]).stem)) / 200
        assert abs(im.size[0] / im.size[1] - original_aspect) < 0.02  # aspect ratio kept
        assert src[i][3] == pytest.approx(original_aspect, rel=1e-6)  # and stored exactly
    batches = list(make_eval_iterator(cfg, split="validation", patch_size=14, global_batch_size=4))
    assert sum(int(b["valid"].sum()) for b in batches) == 6
    # the batches report the original aspect ratio, not the pre-resized image's (rounded) one
    ratios = np.concatenate([b["aspect_ratio"][b["valid"]] for b in batches])
    np.testing.assert_allclose(np.sort(ratios), np.repeat([1.5, 2.0, 2.5], 2), rtol=1e-6)
    with pytest.raises(UserError, match="no ArrayRecord files"):
        open_source(_cfg(f"arrayrecord:{tmp_path}/none-*.array_record"), "train")


@pytest.mark.slow
def test_prepare_data_script_reports_a_missing_folder_in_one_line(tmp_path):
    args = ["--source", f"folder:{tmp_path / 'missing'}", "--out", str(tmp_path / "o")]
    proc = run_script("scripts/prepare_data.py", *args)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: image folder") and "\n" not in proc.stderr.strip()


def test_a_run_lists_a_folder_once(tmp_path, monkeypatch):
    """open_source returns the same source for the same settings (a probe opens its training split for the
    iterator, the minival split and the class count), and lists the folder again once it changed."""
    root = _class_folder(tmp_path)
    listings = []
    original = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path=".": listings.append(path) or original(path))
    cfg = _cfg(f"folder:{root}")
    first = open_source(cfg, "train")
    listed = len(listings)
    assert listed > 0 and open_source(cfg, "train") is first and len(listings) == listed
    os.mkdir(os.path.join(root, "c_birds"))
    Image.new("RGB", (8, 8)).save(os.path.join(root, "c_birds", "0.png"))
    os.utime(root, ns=(os.stat(root).st_atime_ns, os.stat(root).st_mtime_ns + 10**9))
    again = open_source(cfg, "train")
    assert again is not first and again.classes[-1] == "c_birds"
