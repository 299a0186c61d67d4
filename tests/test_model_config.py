"""Model config defaults and validation of user-set values."""

import jax
import pytest

from naraim.errors import UserError
from naraim.model.config import (
    default_model_config,
    resolve_attention_impl,
    resolve_model_config,
    validate_model_config,
)


def test_defaults():
    cfg = default_model_config()
    assert cfg.variant == "B/14" and cfg.posemb == "absolute_sincos_2d" and cfg.attention == "prefix_causal"
    assert cfg.head == "linear" and cfg.dtype == "float32" and cfg.remat == "" and cfg.scan is False
    assert cfg.sos_token is False
    validate_model_config(cfg, patch_size=14, max_tokens=256)


def test_resolve_fills_missing_keys():
    cfg = resolve_model_config({"variant": "Ti/16", "denoiser": {"depth": 2}})
    assert cfg.variant == "Ti/16" and cfg.posemb == "absolute_sincos_2d"
    assert cfg.denoiser.depth == 2 and cfg.denoiser.mlp_ratio == default_model_config().denoiser.mlp_ratio


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("variant", "Q/14", "model.variant"),
        ("variant", "B/16", "patch 16"),
        ("posemb", "sinusoid", "model.posemb"),
        ("attention", "full", "model.attention"),
        ("head", "conv", "model.head"),
        ("dtype", "float16", "model.dtype"),
        ("remat", "save_everything", "model.remat"),
        ("attention_impl", "flash", "model.attention_impl"),
        ("attention_impl", "cudnn", "bfloat16"),
    ],
)
def test_bad_values_raise_user_error(key, value, match):
    cfg = default_model_config()
    cfg[key] = value
    with pytest.raises(UserError, match=match):
        validate_model_config(cfg, patch_size=14, max_tokens=256)


def test_cudnn_needs_a_gpu():
    cfg = default_model_config()
    cfg.update(attention_impl="cudnn", dtype="bfloat16")
    with pytest.raises(UserError, match="needs a GPU"):  # this test runs on the CPU
        validate_model_config(cfg, patch_size=14, max_tokens=256)


def test_learned_table_must_cover_the_budget():
    cfg = default_model_config()
    cfg.posemb = "learned"
    validate_model_config(cfg, patch_size=14, max_tokens=256)
    with pytest.raises(UserError, match="learned_posemb_max_side"):
        validate_model_config(cfg, patch_size=14, max_tokens=576)


def test_automatic_attention_impl_picks_cudnn_only_for_bfloat16_on_gpu(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert resolve_attention_impl("", "bfloat16", 64) == "xla"
    assert resolve_attention_impl("cudnn", "bfloat16", 64) == "cudnn"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert resolve_attention_impl("", "bfloat16", 64) == "cudnn"
    assert resolve_attention_impl("", "bfloat16", 128) == "cudnn"
    assert resolve_attention_impl("", "float32", 64) == "xla"
    assert resolve_attention_impl("", "bfloat16", 16) == "xla"
    assert resolve_attention_impl("xla", "bfloat16", 64) == "xla"
