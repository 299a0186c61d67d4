import pytest

from naraim.data.config import default_data_config, synthetic_sides, validate_data_config
from naraim.errors import UserError


def _cfg(**kw):
    cfg = default_data_config()
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_defaults_are_valid():
    validate_data_config(default_data_config(), 14)
    validate_data_config(_cfg(image_size=64, max_tokens=16), 16)


@pytest.mark.parametrize(
    "kw, patch, needle",
    [
        ({}, 15, "does not divide"),
        ({"max_tokens": -1}, 14, "is negative"),
        ({"transforms": ("native_aspect_ratio_resize", "blur")}, 14, "unknown transform 'blur'"),
        ({"transforms": ("random_crop_native",)}, 14, "must end its geometry"),
        ({"eval_transforms": ("horizontal_flip",)}, 14, "must end its geometry"),
        ({"max_tokens": 100}, 14, "raise data.max_tokens"),
        ({"source": "folder:/nonexistent/images"}, 14, "does not exist"),
        ({"source": "imagenet"}, 14, "is not one of"),
        ({"source": "arrayrecord:/nonexistent/{split}-*.array_record"}, 14, "no ArrayRecord files"),
        ({"ordering": "spiral"}, 14, "not an ordering"),
        ({"crop_scale": (0.5, 0.2)}, 14, "crop_scale"),
    ],
)
def test_bad_values_raise_one_line_user_errors(kw, patch, needle):
    with pytest.raises(UserError, match=needle) as e:
        validate_data_config(_cfg(**kw), patch)
    assert "\n" not in str(e.value)


def test_token_budget_below_grid_is_fine_with_fit_to_token_budget():
    validate_data_config(
        _cfg(max_tokens=64, transforms=("fit_to_token_budget",), eval_transforms=("fit_to_token_budget",)), 14
    )


def test_synthetic_sides_default_to_the_image_size():
    assert synthetic_sides(default_data_config()) == (64, 320)
    assert synthetic_sides(_cfg(image_size=64)) == (32, 91)
    cfg = _cfg()
    cfg.synthetic.min_side, cfg.synthetic.max_side = 10, 20
    assert synthetic_sides(cfg) == (10, 20)


def test_too_many_synthetic_classes():
    cfg = _cfg()
    cfg.synthetic.num_classes = 11
    with pytest.raises(UserError, match="num_classes=11"):
        validate_data_config(cfg, 14)
