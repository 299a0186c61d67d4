import math

import numpy as np
import pytest
from PIL import Image

from naraim.data import transforms as T

S, P, N = 224, 14, 256


def _img(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _rng(i=0):
    return np.random.default_rng(i)


@pytest.mark.parametrize("w, h", [(533, 400), (400, 533), (300, 300), (1000, 224), (711, 400), (64, 90)])
def test_native_aspect_ratio_resize_keeps_aspect_and_area(w, h):
    out = T.native_aspect_ratio_resize(_img(w, h), _rng(), image_size=S, patch_size=P, max_tokens=N)
    ow, oh = out.size
    assert ow % P == 0 and oh % P == 0
    assert (ow // P) * (oh // P) <= N
    assert 0.8 * S * S <= ow * oh <= S * S  # about S*S pixels, cropped down to multiples of P
    assert abs(math.log((ow / oh) / (w / h))) < 0.1  # not squashed


def test_native_aspect_ratio_resize_crops_centrally():
    # a 448x448 image at S=224 is halved exactly: 224 = 16 patches, no crop; compare with PIL's own resize.
    img = _img(448, 448)
    out = T.native_aspect_ratio_resize(img, _rng(), image_size=224, patch_size=16, max_tokens=N)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img.resize((224, 224), Image.BOX)))
    # 230 px: scale 1 -> 224 with 3 pixels cut on each side (central crop).
    img = _img(230, 230)
    out = T.native_aspect_ratio_resize(img, _rng(), image_size=230, patch_size=14, max_tokens=N)
    assert out.size == (224, 224)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img)[3:227, 3:227])


@pytest.mark.parametrize("w, h", [(10, 400), (4000, 100), (1, 1)])
def test_native_aspect_ratio_resize_extreme_aspect_ratios_fit_the_budget(w, h):
    out = T.native_aspect_ratio_resize(_img(w, h), _rng(), image_size=S, patch_size=P, max_tokens=N)
    ow, oh = out.size
    assert ow >= P and oh >= P and ow % P == 0 and oh % P == 0
    assert (ow // P) * (oh // P) <= N


@pytest.mark.parametrize("w, h", [(533, 400), (400, 533), (1000, 100), (100, 4000), (20, 20000)])
@pytest.mark.parametrize("budget", [16, 64])
def test_fit_to_token_budget_uses_the_largest_grid_that_fits(w, h, budget):
    out = T.fit_to_token_budget(_img(w, h), _rng(), patch_size=P, max_tokens=budget)
    cols, rows = out.size[0] // P, out.size[1] // P
    assert out.size == (cols * P, rows * P) and 1 <= rows * cols <= budget
    if max(w / h, h / w) < budget:
        assert abs(math.log((cols / rows) / (w / h))) < math.log(1 + 1 / min(rows, cols)) + 1e-9
        short, a = (rows, w / h) if w >= h else (cols, h / w)  # one more row/col on the short side overflows
        assert (short + 1) * max(1, round((short + 1) * a)) > budget


def test_random_crop_native_geometry_and_fallback():
    img = _img(800, 600)
    for i in range(50):
        out = T.random_crop_native(img, _rng(i), image_size=S)
        w, h = out.size
        assert w * h >= S * S
        assert 0.4 * 800 * 600 * 0.97 <= w * h <= 800 * 600
        assert 3 / 4 * 0.98 <= w / h <= 4 / 3 * 1.02 or (w, h) == (800, 600)
    small = _img(250, 250)  # the smallest allowed crop (0.4 of the area) is below S*S pixels: rarely any crop
    sizes = {T.random_crop_native(small, _rng(i), image_size=S).size for i in range(20)}
    assert all(w * h >= S * S for w, h in sizes)
    tiny = _img(200, 150)  # fewer than S*S pixels: always the whole image
    assert all(T.random_crop_native(tiny, _rng(i), image_size=S) is tiny for i in range(10))


def test_crop_choice_last_keeps_the_last_of_ten_fitting_draws():
    """data.crop_choice='last' (the NARAIM reference's loop, which cannot leave early in graph mode) makes all
    10 (area, aspect) draws and keeps the last crop that fits; 'first' stops at the first (torchvision)."""
    h, w, scale, ratio = 600, 800, (0.4, 1.0), (3 / 4, 4 / 3)
    for seed in range(20):
        rng, fits = _rng(seed), []
        for _ in range(10):  # the same draws, written out
            area = h * w * rng.uniform(*scale)
            r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
            cw, ch = round(math.sqrt(area * r)), round(math.sqrt(area / r))
            if 0 < cw <= w and 0 < ch <= h and cw * ch >= S * S:
                fits.append((int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw))
        assert T._sample_crop(h, w, _rng(seed), scale, ratio, S * S, "last") == fits[-1]
        assert T._sample_crop(h, w, _rng(seed), scale, ratio, S * S, "first") == fits[0]


def test_random_crop_native_then_resize_is_not_squashed():
    img = _img(1200, 400)  # the resize keeps each crop's own width/height
    for i in range(10):
        crop = T.random_crop_native(img, _rng(i), image_size=S)
        out = T.native_aspect_ratio_resize(crop, _rng(i), image_size=S, patch_size=P, max_tokens=N)
        a_crop, a_out = crop.size[0] / crop.size[1], out.size[0] / out.size[1]
        assert abs(math.log(a_out / a_crop)) < 0.1


def test_transforms_are_deterministic_given_the_rng_and_pure():
    img = _img(640, 480)
    before = np.asarray(img).copy()
    names = ["random_crop_native", "random_resized_crop", "horizontal_flip"]
    for name in names:
        t = T.make_transform(name, image_size=S, patch_size=P, max_tokens=N)
        a = [np.asarray(t(img, _rng(7))) for _ in range(2)]
        np.testing.assert_array_equal(a[0], a[1])
    np.testing.assert_array_equal(np.asarray(img), before)


def test_random_resized_crop_is_square():
    for w, h in [(800, 600), (100, 1000), (50, 50)]:
        for i in range(5):
            assert T.random_resized_crop(_img(w, h), _rng(i), image_size=S).size == (S, S)


def test_resize_shorter_center_crop_takes_the_center():
    img = _img(512, 256)  # shorter side already 256 -> no scaling, central 224 x 224
    out = T.resize_shorter_center_crop(img, _rng(), image_size=224)
    assert out.size == (224, 224)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img)[16:240, 144:368])
    assert T.resize_shorter_center_crop(_img(100, 70), _rng(), image_size=112).size == (112, 112)


def test_horizontal_flip():
    img = _img(30, 20)
    flipped = T.horizontal_flip(img, _rng(), prob=1.0)
    np.testing.assert_array_equal(np.asarray(flipped), np.asarray(img)[:, ::-1])
    assert T.horizontal_flip(img, _rng(), prob=0.0) is img
    flips = sum(T.horizontal_flip(img, _rng(i)) is not img for i in range(200))
    assert 70 < flips < 130


def test_make_transform_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown transform"):
        T.make_transform("blur", image_size=S, patch_size=P, max_tokens=N)


def test_native_resize_then_fit_to_a_smaller_budget_keeps_the_whole_image():
    img = _img(640, 480)
    names = ["native_aspect_ratio_resize", "fit_to_token_budget"]
    ts = [T.make_transform(n, image_size=S, patch_size=P, max_tokens=48) for n in names]
    out = T.apply_transforms(img, _rng(), ts)
    cols, rows = out.size[0] // P, out.size[1] // P
    assert (rows, cols) == (6, 8)  # 4:3 with 48 patches, nothing cropped away


@pytest.mark.parametrize("s, p", [(64, 8), (224, 14), (96, 16)])
def test_native_aspect_ratio_resize_never_exceeds_the_full_grid(s, p):
    known = [
        (1, 17),
        (5, 85),
        (17, 1),
        (1, 29),
        (2, 58),
        (58, 2),
        (130, 2),
    ]  # rounding up both sides overflowed
    for w, h in [*known, *np.random.default_rng(s).integers(1, 700, (100, 2))]:
        out = T.native_aspect_ratio_resize(
            _img(int(w), int(h)), _rng(), image_size=s, patch_size=p, max_tokens=(s // p) ** 2
        )
        assert (out.size[0] // p) * (out.size[1] // p) <= (s // p) ** 2


@pytest.mark.parametrize("name", T.TRANSFORM_NAMES)
def test_random_transforms_are_exactly_those_that_use_the_rng(name):
    t = T.make_transform(name, image_size=S, patch_size=P, max_tokens=N)
    image = _img(533, 400)
    outputs = {np.asarray(t(image, _rng(seed))).tobytes() for seed in range(8)}
    assert (len(outputs) > 1) == (name in T.RANDOM_TRANSFORMS)
    assert T.draws_randomness([name], flip_prob=0.5) == (name in T.RANDOM_TRANSFORMS)
    assert not T.draws_randomness(["native_aspect_ratio_resize", "horizontal_flip"], flip_prob=0.0)
