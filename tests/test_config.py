import importlib.util
import os
import subprocess
import sys

import pytest

from naraim.errors import UserError
from naraim.train.config import validate_pretrain_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = [
    "naraim_b14.py:base",
    "naraim_b14.py:fractional",
    "naraim_b14.py:random_crop",
    "naraim_b14.py:no_norm",
    "aim_b14.py",
    "aim_600m.py",
    "aim_1b.py",
    "aim_3b.py",
    "aim_7b.py",
    "demo.py:naraim",
    "demo.py:aim",
]


def load(spec: str):
    path, _, arg = spec.partition(":")
    spec = importlib.util.spec_from_file_location(f"cfg_{path[:-3]}", os.path.join(ROOT, "configs", path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg or None)


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
    assert not load("naraim_b14.py:no_norm").loss.norm_pix
    assert "random_crop_native" not in load("naraim_b14.py:base").data.transforms
    assert load("aim_7b.py").mesh.fsdp and load("aim_b14.py").data.max_tokens == 256


@pytest.mark.parametrize(
    "override, message",
    [
        ({"data.image_size": 60}, "does not divide"),
        ({"data.max_tokens": 0}, "below one patch"),
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
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "pretrain.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


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
        "--config", "configs/demo.py:naraim", "--workdir", str(tmp_path), "--config.data.max_tokens=0"
    )
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1 and "data.max_tokens=0" in r.stderr
    r = run_pretrain("--config", "configs/demo.py:nope", "--workdir", str(tmp_path))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "variant 'nope'" in r.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


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
