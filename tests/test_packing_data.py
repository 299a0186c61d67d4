"""Token budgets per image and packed training rows: sizes, the packed batch contract, exact resume."""

import numpy as np
import pytest
from PIL import Image

from naraim.data.config import default_data_config, validate_data_config
from naraim.data.pipeline import make_train_iterator
from naraim.data.tokens import unpatchify
from naraim.data.transforms import draw_token_budget, fit_to_token_budget
from naraim.errors import UserError

P = 8
BUDGETS = (2, 4, 8, 16)


def _cfg(train_size=12, **kw):
    cfg = default_data_config()
    cfg.image_size, cfg.max_tokens = 32, 32
    cfg.read_threads = 1
    cfg.synthetic.min_side, cfg.synthetic.max_side = 16, 96
    cfg.synthetic.train_size, cfg.synthetic.validation_size = train_size, 10
    cfg.token_budgets = BUDGETS
    cfg.transforms = ("random_crop_native", "fit_to_token_budget", "horizontal_flip")
    cfg.update(kw)
    validate_data_config(cfg, P)
    return cfg


def _train(cfg, batch=2, seed=0):
    return make_train_iterator(cfg, patch_size=P, global_batch_size=batch, seed=seed)


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_budget_draws_cover_the_list_and_log_uniform_stays_in_range():
    rng = np.random.default_rng(0)
    uniform = [draw_token_budget(rng, BUDGETS, "uniform") for _ in range(400)]
    assert set(uniform) == set(BUDGETS) and min(np.bincount(uniform)[list(BUDGETS)]) > 60
    log = np.array([draw_token_budget(rng, (64, 1024), "log_uniform") for _ in range(2000)])
    assert log.min() >= 64 and log.max() <= 1024
    assert abs(np.median(log) - 256) < 30  # log-uniform on [64, 1024]: median sqrt(64 * 1024) = 256


@pytest.mark.parametrize("size", [(400, 533), (533, 400), (120, 90), (1000, 30)])
@pytest.mark.parametrize("budget", [1, 7, 64, 256])
def test_an_image_gets_the_largest_grid_of_its_budget_and_never_more_than_its_own_patches(size, budget):
    w, h = size
    image = Image.new("RGB", (w, h))
    out = fit_to_token_budget(image, None, patch_size=14, max_tokens=budget, upscale=False)
    rows, cols = out.size[1] // 14, out.size[0] // 14
    own = max(1, (h // 14) * (w // 14))
    assert rows * cols <= min(budget, own)
    enlarged = fit_to_token_budget(image, None, patch_size=14, max_tokens=budget, upscale=True)
    r2, c2 = enlarged.size[1] // 14, enlarged.size[0] // 14
    assert r2 * c2 <= budget and r2 * c2 >= rows * cols
    if budget >= 7 and min(w, h) >= 90:  # room for a grid near the image's aspect ratio
        assert abs(np.log((c2 / r2) / (w / h))) < 0.6


def test_packed_rows_hold_whole_images_with_their_own_positions():
    cfg = _cfg(packing="first_fit", max_images_per_row=4, packing_bins=4)
    unpacked_cfg = _cfg(packing="none")
    rows = next(_train(cfg, batch=4))
    assert rows["patches"].shape[:2] == (4, 32) and rows["grid"].shape == (4, 4, 2)
    assert rows["length"].shape == rows["label"].shape == rows["aspect_ratio"].shape == (4, 4)
    # the same images, one per row: every packed image is one of them, pixel for pixel
    singles = next(_train(unpacked_cfg, batch=16))
    known = {
        singles["patches"][i, : singles["length"][i]].tobytes(): i for i in range(len(singles["length"]))
    }
    seen = 0
    for r in range(4):
        seg, pos = rows["segment_ids"][r], rows["positions"][r]
        for s in range(4):
            n = rows["length"][r, s]
            tokens = seg == s + 1
            assert tokens.sum() == n
            if n == 0:
                assert tuple(rows["grid"][r, s]) == (1, 1) and rows["label"][r, s] == -1
                continue
            assert np.array_equal(pos[tokens], np.arange(n))
            assert rows["grid"][r, s].prod() == n
            i = known[rows["patches"][r][tokens].tobytes()]
            assert rows["label"][r, s] == singles["label"][i]
            assert np.array_equal(rows["coords"][r][tokens], singles["coords"][i, :n])
            seen += 1
        assert np.all(rows["patches"][r][seg == 0] == 0) and np.all(pos[seg == 0] == 0)
    assert seen > 4  # more than one image per row on average
    image = unpatchify(rows["patches"][0][seg_first := rows["segment_ids"][0] == 1], rows["grid"][0, 0], P)
    assert image.shape == (rows["grid"][0, 0, 0] * P, rows["grid"][0, 0, 1] * P, 3) and seg_first.any()


def test_packing_leaves_less_padding_than_one_image_per_row():
    def padding(cfg):
        rows = [next(it) for it in [_train(cfg, batch=4)] for _ in range(6)]
        return 1 - np.mean(
            [(r["length"].sum()) / r["patches"].shape[0] / r["patches"].shape[1] for r in rows]
        )

    one_per_row = padding(_cfg(train_size=40, packing="none"))
    packed = padding(_cfg(train_size=40, packing="best_fit", packing_bins=8))
    assert packed < one_per_row / 2, (packed, one_per_row)


@pytest.mark.parametrize(
    "num_workers,after",  # mid-window (4 rows: 2 batches), at its end, after an epoch boundary
    [(0, 1), (0, 2), (0, 5), pytest.param(2, 5, marks=pytest.mark.slow)],  # workers: seconds to start
)
def test_packed_iterator_state_restores_exactly(num_workers, after):
    cfg = _cfg(train_size=9, packing="first_fit", packing_bins=4, num_workers=num_workers)
    it = _train(cfg)
    for _ in range(after):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    fresh = _train(cfg)
    fresh.set_state(state)
    assert all(_same(e, next(fresh)) for e in expected)


def test_budget_and_packing_mistakes_are_one_clear_user_error():
    with pytest.raises(UserError, match="no row can hold an image"):
        _cfg(token_budgets=(16, 64))
    with pytest.raises(UserError, match="fit_to_token_budget"):
        _cfg(transforms=("native_aspect_ratio_resize",))
    with pytest.raises(UserError, match="data.packing='greedy'"):
        _cfg(packing="greedy")
