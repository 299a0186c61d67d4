"""Bad and unusual input: decoded correctly, or skipped with a warning naming the file, never a crash."""

import io
import logging
import os
import socket
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from naraim.data.config import default_data_config
from naraim.data.decode import BadImageError, decode_image
from naraim.data.pipeline import make_eval_iterator, make_train_iterator, skipped_examples
from naraim.data.sources import open_source
from naraim.data.sources.base import UnusableExample
from naraim.data.sources.folder import read_file
from naraim.errors import UserError


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _rgb(w=40, h=30, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_grayscale_becomes_rgb():
    out = np.asarray(decode_image(_encode(Image.new("L", (20, 10), 77), "PNG")))
    assert out.shape == (10, 20, 3) and out.dtype == np.uint8 and (out == 77).all()


def test_cmyk_jpeg_becomes_rgb():
    out = np.asarray(decode_image(_encode(Image.new("CMYK", (20, 16), (0, 255, 255, 0)), "JPEG", quality=95)))
    assert out.shape == (16, 20, 3)
    assert out[..., 0].mean() > 200 and out[..., 1:].mean() < 60  # red


def test_palette_and_transparency_are_composited_over_white():
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    np.testing.assert_array_equal(np.asarray(decode_image(_encode(pal, "PNG")))[0, 0], [0, 0, 255])
    pal.info["transparency"] = 1
    np.testing.assert_array_equal(
        np.asarray(decode_image(_encode(pal, "PNG", transparency=1)))[0, 0], [255] * 3
    )
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.putpixel((1, 1), (0, 255, 0, 255))
    out = np.asarray(decode_image(_encode(rgba, "PNG")))
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[1, 1], [0, 255, 0])


def test_16_bit_png_is_scaled_to_8_bits():
    a = np.array([[0, 32768, 65535]], np.uint16).repeat(3, 0)
    im = Image.fromarray(a)
    assert im.mode.startswith("I;16")
    out = np.asarray(decode_image(_encode(im, "PNG")))
    assert out.shape == (3, 3, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 127, 255])


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 10, 20))  # blue band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = np.asarray(decode_image(_encode(im, "JPEG", exif=exif, quality=95)))
    assert out.shape == (40, 20, 3)  # portrait after rotation
    assert out[2, 10, 2] > 200 and out[-3, 10, 0] > 200  # the left band is now on top


def test_tiny_images_are_upscaled_to_one_patch():
    out = decode_image(_encode(Image.new("RGB", (5, 3), 9), "PNG"), patch_size=14)
    assert min(out.size) == 14 and out.size[0] > out.size[1]


@pytest.mark.parametrize(
    "data",
    [b"", b"this is a text file, not an image\n", b"\xff\xd8\xff\xe0" + b"\x00" * 50],
)
def test_non_images_raise_bad_image_error(data):
    with pytest.raises(BadImageError):
        decode_image(data)


def test_truncated_jpeg_raises_bad_image_error():
    data = _encode(_rgb(200, 150), "JPEG")
    with pytest.raises(BadImageError):
        decode_image(data[: len(data) // 2])


def _bad_folder(root):
    """A class folder with every kind of unusual file; 4 unusable ones."""
    d = root / "train" / "things"
    d.mkdir(parents=True)
    (d / "a_good.jpg").write_bytes(_encode(_rgb(), "JPEG"))
    (d / "b_truncated.jpg").write_bytes(_encode(_rgb(200, 150), "JPEG")[:300])
    (d / "c_notes.txt").write_bytes(b"not an image")
    (d / "d_gray.png").write_bytes(_encode(Image.new("L", (30, 30), 5), "PNG"))
    (d / "e_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (d / "f_cmyk.jpg").write_bytes(_encode(Image.new("CMYK", (30, 20)), "JPEG"))
    (d / "g_rgba.png").write_bytes(_encode(Image.new("RGBA", (30, 20)), "PNG"))
    (d / "h_16bit.png").write_bytes(_encode(Image.fromarray(np.full((20, 20), 999, np.uint16)), "PNG"))
    (d / "i_tiny.png").write_bytes(_encode(Image.new("RGB", (2, 3)), "PNG"))
    (d / "j_wide.png").write_bytes(_encode(Image.new("RGB", (800, 20)), "PNG"))  # 1:40
    (d / "k_empty.jpg").write_bytes(b"")
    os.mkfifo(d / "l_pipe.jpg")  # reading it would block forever: never listed
    return root, {"b_truncated.jpg", "c_notes.txt", "e_corrupt.png", "k_empty.jpg"}


def _folder_cfg(path):
    cfg = default_data_config()
    cfg.source = f"folder:{path}"
    cfg.image_size, cfg.max_tokens = 32, 16
    cfg.read_threads = 1
    return cfg


def test_pipeline_skips_bad_files_with_warnings_and_keeps_batches_full(tmp_path, caplog):
    root, bad = _bad_folder(tmp_path)
    cfg = _folder_cfg(root)
    skipped_before = skipped_examples()
    with caplog.at_level(logging.WARNING, logger="naraim.data"):
        it = make_train_iterator(cfg, patch_size=8, global_batch_size=11, seed=0)
        batches = [next(it) for _ in range(3)]
    for b in batches:
        assert b["patches"].shape == (11, 16, 192) and (b["length"] >= 1).all()
        assert (b["length"] <= 16).all() and (b["label"] == 0).all()
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert all(name in warned for name in bad)
    assert skipped_examples() - skipped_before >= len(bad)
    ev = list(make_eval_iterator(cfg, split="train", patch_size=8, global_batch_size=4))
    valid = np.concatenate([b["valid"] for b in ev])
    assert valid.size == 12 and valid.sum() == 11 - len(bad)  # 11 files, bad ones marked invalid


def test_source_without_usable_images_is_a_user_error(tmp_path):
    d = tmp_path / "cls"
    d.mkdir()
    (d / "x.jpg").write_bytes(b"junk")
    with pytest.raises(UserError, match="no usable image"):
        make_train_iterator(_folder_cfg(tmp_path), patch_size=8, global_batch_size=2, seed=0)


def test_each_bad_file_is_counted_and_warned_once(tmp_path, caplog):
    root, bad = _bad_folder(tmp_path)
    cfg = _folder_cfg(root)
    before = skipped_examples()
    with caplog.at_level(logging.WARNING, logger="naraim.data"):
        it = make_train_iterator(cfg, patch_size=8, global_batch_size=11, seed=0)
        for _ in range(6):  # 6 epochs of 11 files
            next(it)
    assert skipped_examples() - before <= len(bad)
    for name in bad:
        assert sum(name in r.getMessage() for r in caplog.records) <= 1


def _odd_entries_folder(root):
    """Two classes of 2 good PNGs each, plus one entry of every kind that listing must skip without opening;
    returns (root, {kind: count})."""
    for c, seed in (("cat", 0), ("dog", 5)):
        (root / c).mkdir(parents=True)
        for i in range(2):
            _rgb(seed=seed + i).save(root / c / f"{i}.png")
    cat, dog = root / "cat", root / "dog"
    os.symlink(cat / "loop2", cat / "loop1")  # two file links pointing at each other
    os.symlink(cat / "loop1", cat / "loop2")
    os.symlink(cat / "nowhere.png", cat / "dangling.png")
    os.symlink(cat, cat / "self")  # a folder link back into the class folder: listed once
    outside = root.parent / "outside"
    outside.mkdir()
    _rgb(seed=9).save(outside / "x.png")
    os.symlink(outside, dog / "elsewhere")  # a folder link out of the class folder
    os.symlink("/dev/null", dog / "null.png")  # a device file
    os.mkfifo(dog / "pipe.jpg")  # reading it would block forever
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(dog / "sock.jpg"))
    os.symlink(_rgb(seed=3).save(outside / "y.png") or outside / "y.png", dog / "linked.png")  # a file link
    return (
        root,
        {
            "looping links": 2,
            "dangling links": 1,
            "links to folders outside the class folder": 1,
            "device files": 1,
            "pipes (FIFOs)": 1,
            "sockets": 1,
        },
        server,
    )


def test_listing_skips_and_counts_links_pipes_sockets_and_devices_without_opening_them(tmp_path, caplog):
    root, expected, server = _odd_entries_folder(tmp_path / "data")
    cfg = _folder_cfg(root)
    cfg.holdout_fraction = 0.5
    with server, caplog.at_level(logging.WARNING, logger="naraim.data"):
        src = open_source(cfg, "train")
        again = open_source(cfg, "train")  # listed again: no second warning
    assert dict(src.skipped_entries) == dict(again.skipped_entries) == expected
    names = sorted(os.path.basename(p) for p, _ in src._items + open_source(cfg, "validation")._items)
    assert names == ["0.png", "0.png", "1.png", "1.png", "linked.png"]
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == len(expected)
    for kind, count in expected.items():
        assert sum(f"skipped {count} {kind}" in line for line in lines) == 1
    batch = next(make_train_iterator(cfg, patch_size=8, global_batch_size=4, seed=0))
    assert batch["patches"].shape == (4, 16, 192)


def test_files_over_max_file_bytes_or_without_an_image_header_are_skipped_unread(tmp_path, caplog):
    d = tmp_path / "data" / "train" / "c"
    d.mkdir(parents=True)
    good = _encode(_rgb(), "PNG")
    (d / "a.png").write_bytes(good)
    (d / "b_big.png").write_bytes(good + b"\0" * 5_000)  # an image, but over the limit
    (d / "c_text.jpg").write_bytes(b"hello" * 400)
    cfg = _folder_cfg(tmp_path / "data")
    cfg.max_file_bytes = len(good) + 100
    src = open_source(cfg, "train")
    assert src[0][0] == good
    with pytest.raises(UnusableExample, match="exceed data.max_file_bytes") as big:
        src[1]
    with pytest.raises(UnusableExample, match="not an image") as text:
        src[2]
    assert big.value.name.endswith("b_big.png") and text.value.name.endswith("c_text.jpg")
    with caplog.at_level(logging.WARNING, logger="naraim.data"):
        ev = list(make_eval_iterator(cfg, split="train", patch_size=8, global_batch_size=3))
    assert ev[0]["valid"].tolist() == [True, False, False]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "b_big.png" in warned and "c_text.jpg" in warned


def test_reading_a_photo_allocates_its_size_not_the_limit(tmp_path):
    """read(n) allocates n bytes before it reads: reading with the 64 MiB limit cost 64 MiB per image."""
    path = tmp_path / "small.png"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(path)
    tracemalloc.start()
    try:
        data = read_file(str(path), 64 * 2**20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data == path.read_bytes() and peak < 2**20


def test_reading_checks_the_size_and_the_header_before_the_rest(tmp_path):
    path = tmp_path / "huge.jpg"
    with open(path, "wb") as f:
        f.truncate(200 * 2**20)  # 200 MiB of zeros, sparse: a video renamed, a disk image
    tracemalloc.start()
    try:
        with pytest.raises(UnusableExample, match="exceed"):
            read_file(str(path), 64 * 2**20)
        with pytest.raises(UnusableExample, match="not an image"):
            read_file(str(path), 2**30)  # under the limit: the header is read, not the rest
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20


def test_a_malformed_arrayrecord_record_is_skipped(tmp_path):
    from array_record.python.array_record_module import ArrayRecordWriter

    from naraim.data.sources.arrayrecord import encode_record

    path = tmp_path / "train-00000-of-00001.array_record"
    writer = ArrayRecordWriter(str(path), "group_size:1")
    writer.write(encode_record(_encode(_rgb(), "PNG"), 0, "good"))
    writer.write(b"\x01\x02\x03")  # shorter than a header
    writer.write(encode_record(_encode(_rgb(seed=2), "PNG"), 1, "also good"))
    writer.close()
    (tmp_path / "dataset.json").write_text('{"classes": ["a", "b"], "record_format": 2}')
    cfg = _folder_cfg(tmp_path)
    cfg.source = f"arrayrecord:{tmp_path}/train-*.array_record"
    ev = list(make_eval_iterator(cfg, split="train", patch_size=8, global_batch_size=4))
    assert np.concatenate([b["valid"] for b in ev]).tolist() == [True, False, True, False]


def test_an_extremely_elongated_image_is_cut_before_it_is_upscaled():
    """A 1 x 300,000 PNG (a few KB) would become 8 x 2,400,000 pixels if upscaled whole; it is first cut to
    the part the token budget can show."""
    data = _encode(Image.new("RGB", (300_000, 1), (200, 10, 10)), "PNG")
    out = decode_image(data, patch_size=8, max_tokens=16)
    assert out.size == (16 * 8, 8)


def test_decompression_bombs_are_refused_from_the_header():
    data = _encode(Image.new("L", (4000, 3000)), "PNG")
    with pytest.raises(BadImageError, match="12,000,000 pixels exceeds data.max_pixels=1,000,000"):
        decode_image(data, max_pixels=1_000_000)
    assert decode_image(data, max_pixels=12_000_000).size == (4000, 3000)


def _pil_decode(data: bytes, min_area: int = 0) -> np.ndarray:
    """PIL's own decode of the same request: what naraim's JPEG path must reproduce pixel for pixel."""
    import math

    from PIL import ImageOps

    im = Image.open(io.BytesIO(data))
    w, h = im.size
    if min_area and w * h > 2 * min_area:
        f = math.sqrt(min_area / (w * h))
        im.draft("RGB", (math.ceil(w * f), math.ceil(h * f)))
    im.load()
    ImageOps.exif_transpose(im, in_place=True)
    return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("min_area", [0, 20_000, 5_000])
def test_the_jpeg_fast_path_gives_pils_pixels(min_area):
    """RGB and grayscale JPEGs are decoded by simplejpeg: the same pixels as PIL, with the DCT-scaled draft
    and every EXIF orientation; CMYK goes through PIL."""
    photo = _rgb(300, 200, seed=3)
    cases = [_encode(photo, "JPEG", quality=q) for q in (75, 95)]
    cases.append(_encode(photo.convert("L"), "JPEG", quality=90))
    cases.append(_encode(photo, "JPEG", quality=90, subsampling=0))
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        cases.append(_encode(photo, "JPEG", quality=90, exif=exif.tobytes()))
    cases.append(_encode(photo.convert("CMYK"), "JPEG", quality=90))
    for data in cases:
        ours = np.asarray(decode_image(data, min_area=min_area))
        np.testing.assert_array_equal(ours, _pil_decode(data, min_area))
