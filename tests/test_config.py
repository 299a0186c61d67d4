import os

import pytest
from script_runner import run_script

from naraim.data.config import token_budget
from naraim.errors import UserError
from naraim.infra.flags import load_config_file
from naraim.model.sizes import patch_size
from naraim.train.config import validate_pretrain_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = [
    "naraim_b14.py:base",
    "naraim_b14.py:fractional",
    "naraim_b14.py:random_crop",
    "naraim_b14.py:no_norm",
    "naraim_b14.py:base_no_norm",
    "aim_b14.py",
    "aim_600m.py",
    "aim_1b.py",
    "aim_3b.py",
    "aim_7b.py",
    "demo.py:naraim",
    "demo.py:aim",
    "darl_l16.py:diffusion",
    "darl_l16.py:mse",
    "darl_l16.py:native",
]


def load(spec: str):
    return load_config_file(os.path.join(ROOT, "configs", spec))


@pytest.mark.parametrize("spec", CONFIGS)
def test_shipped_configs_are_valid(spec):
    cfg = load(spec)
    cfg.data.source = "synthetic"  # ImageNet is not on the test machine
    validate_pretrain_config(cfg, num_devices=8)


def test_table1_variants():
    assert load("naraim_b14.py:base").model.posemb == "absolute_sincos_2d"
    assert load("naraim_b14.py:fractional").model.posemb == "fractional"
    crop = load("naraim_b14.py:random_crop")
    assert crop.model.posemb == "fractional" and "random_crop_native" in crop.data.transforms
    no_norm = load("naraim_b14.py:no_norm")  # Table 1's rows are cumulative: + fractional + crop - norm
    assert not no_norm.loss.norm_pix and no_norm.loss.raw_scale == "unit"
    assert no_norm.model.posemb == "fractional" and "random_crop_native" in no_norm.data.transforms
    base_no_norm = load("naraim_b14.py:base_no_norm")
    assert not base_no_norm.loss.norm_pix and "random_crop_native" not in base_no_norm.data.transforms
    assert "random_crop_native" not in load("naraim_b14.py:base").data.transforms
    aim = load("aim_b14.py")
    assert load("aim_7b.py").mesh.fsdp and token_budget(aim.data, patch_size(aim.model.variant)) == 256


def test_square_aim_budget_follows_variant_and_image_size_overrides():
    """aim_b14 at patch 16 and 128 px: 64 real tokens, so the budget is 64, not 256 of padding."""
    for spec in ("aim_b14.py", "aim_600m.py", "darl_l16.py:diffusion"):
        cfg = load(spec)
        cfg.model.variant = "S/16"
        cfg.data.image_size = 128
        cfg.data.source = "synthetic"
        assert token_budget(cfg.data, 16) == 64
        validate_pretrain_config(cfg, num_devices=1)
    # an explicit budget still wins
    cfg = load("aim_b14.py")
    cfg.data.max_tokens = 300
    assert token_budget(cfg.data, 14) == 300


@pytest.mark.parametrize(
    "override, message",
    [
        ({"data.image_size": 60}, "does not divide"),
        ({"data.max_tokens": -1}, "is negative"),
        ({"batch_size": 30}, "not divisible by 4 devices"),
        ({"micro_batches": 3}, "micro_batches=3"),
        ({"data.source": "folder:/nonexistent/images"}, "does not exist"),
        ({"optim.schedule": "linear"}, "optim.schedule"),
        ({"wandb.mode": "loud"}, "wandb.mode"),
    ],
)
def test_bad_values_raise_one_line(override, message):
    cfg = load("demo.py:naraim")
    for key, value in override.items():
        section, _, leaf = key.rpartition(".")
        (cfg[section] if section else cfg)[leaf] = value
    with pytest.raises(UserError, match=message) as e:
        validate_pretrain_config(cfg, num_devices=4)
    assert "\n" not in str(e.value)


def run_pretrain(*args):
    return run_script("scripts/pretrain.py", *args)


@pytest.mark.slow
def test_cli_unknown_key_and_bad_value_end_with_one_line(tmp_path):
    r = run_pretrain(
        "--config", "configs/demo.py:naraim", "--workdir", str(tmp_path), "--config.optim.learning_rate=1"
    )
    assert r.returncode == 1
    assert (
        r.stderr.strip() == "error: unknown config key 'optim.learning_rate': check the spelling of "
        "--config.optim.learning_rate"
    )
    r = run_pretrain(
        "--config", "configs/demo.py:naraim", "--workdir", str(tmp_path), "--config.data.max_tokens=-1"
    )
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1 and "data.max_tokens=-1" in r.stderr
    r = run_pretrain("--config", "configs/demo.py:nope", "--workdir", str(tmp_path))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "variant 'nope'" in r.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


@pytest.mark.slow
def test_cli_missing_datasets_end_with_one_line(tmp_path):
    for overrides, needle in [
        ([f"--config.data.source=folder:{tmp_path / 'nope'}"], "does not exist"),
        (
            ["--config.data.source=tfds:imagenet2012", f"--config.data.tfds_data_dir={tmp_path}"],
            "not prepared",
        ),
    ]:
        r = run_pretrain("--config", "configs/demo.py:naraim", "--workdir", str(tmp_path / "run"), *overrides)
        assert r.returncode == 1
        assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr
