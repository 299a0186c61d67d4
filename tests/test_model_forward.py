"""Model forward pass: predictions aligned to targets (with and without SOS), heads, named intermediates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from naraim.errors import UserError
from naraim.model.config import validate_model_config
from naraim.model.model import make_model
from naraim.model.vit import make_backbone
from naraim.train.config import default_pretrain_config, validate_pretrain_config

P = 2
N = 8


def batch(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    coords = np.stack(np.divmod(np.arange(N), 4), axis=-1)
    return dict(
        patches=rng.integers(0, 256, (2, N, P * P * 3), dtype=np.uint8),
        coords=np.tile(coords[None].astype(np.int32), (2, 1, 1)),
        grid=np.array([[2, 4], [2, 4]], np.int32),
        length=np.array([N, 6], np.int32),
    )


class Built:
    """A tiny model with its params and a jitted apply(batch, attention=None, prefix_length=None)."""

    def __init__(self, **cfg):
        model = make_model(dict(variant=f"Pico/{P}", attention="causal", **cfg))
        self.params = jax.jit(model.init)(jax.random.key(0), batch())
        self._apply = jax.jit(model.apply, static_argnames="attention")

    def __call__(self, b: dict, attention: str | None = None, prefix_length=None) -> dict:
        return self._apply(self.params, b, attention=attention, prefix_length=prefix_length)


def perturbed(b: dict, j: int) -> dict:
    b = dict(b, patches=b["patches"].copy())
    b["patches"][:, j] = 255 - b["patches"][:, j]
    return b


def changed_preds(model: Built, j: int) -> np.ndarray:
    """Target positions whose prediction changes when patch j is changed (first example, all real)."""
    b = batch()
    diff = np.abs(np.asarray(model(perturbed(b, j))["pred"] - model(b)["pred"]))
    return np.flatnonzero(diff[0].max(axis=-1) > 1e-6)


@pytest.fixture(scope="module")
def linear_model() -> Built:
    return Built()


@pytest.fixture(scope="module")
def sos_model() -> Built:
    return Built(sos_token=True)


def test_prediction_of_patch_j_uses_only_patches_before_j(linear_model):
    model = linear_model
    out = model(batch())
    assert out["pred"].shape == (2, N, P * P * 3) and out["pred"].dtype == jnp.float32
    np.testing.assert_array_equal(out["pred"][:, 0], 0)
    np.testing.assert_array_equal(out["aligned"][:, 1:], out["encoded"][:, :-1])
    for j in (0, 3, 6):
        np.testing.assert_array_equal(changed_preds(model, j), np.arange(j + 1, N))


def test_sos_token_predicts_every_patch_from_the_past_only(sos_model):
    model = sos_model
    assert model.params["params"]["backbone"]["sos"].shape == (64,)
    out = model(batch())
    np.testing.assert_array_equal(out["aligned"], out["encoded"])
    # pred[:, 0] comes from the SOS alone: the same for any image.
    np.testing.assert_allclose(out["pred"][0, 0], out["pred"][1, 0], atol=1e-6)
    assert np.abs(np.asarray(out["pred"][0, 0])).max() > 0
    for j in (0, 3, 6):
        np.testing.assert_array_equal(changed_preds(model, j), np.arange(j + 1, N))
    # The last patch is never input: changing it changes nothing.
    assert changed_preds(model, N - 1).size == 0


def test_backbone_of_an_sos_model_has_the_same_params_without_prepending(sos_model):
    """A probe runs the backbone on all patches (no SOS) with the pre-trained params, 'sos' included."""
    model = sos_model
    vit = make_backbone(dict(variant=f"Pico/{P}", attention="causal", sos_token=True))
    b = batch()
    inputs = [b[k] for k in ("patches", "coords", "grid", "length")]
    shapes = jax.eval_shape(vit.init, jax.random.key(0), *inputs)["params"]
    assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, model.params["params"]["backbone"])
    encoded, _ = jax.jit(vit.apply)({"params": model.params["params"]["backbone"]}, *inputs)
    assert np.isfinite(np.asarray(encoded)).all()


def test_intermediates_by_name(linear_model):
    model = linear_model
    out = model(batch())
    assert {"pred", "aligned", "embed", "block_0", "block_1", "encoded"} <= set(out)
    assert all(out[k].shape == (2, N, 64) for k in ("embed", "block_0", "block_1", "encoded"))
    assert not np.allclose(out["block_0"], out["block_1"])


def test_attention_override_and_prefix(linear_model):
    model = linear_model
    b = batch()
    causal = np.asarray(model(b)["pred"])
    bidir = np.asarray(model(b, attention="bidirectional")["pred"])
    prefix = np.asarray(model(b, attention="prefix_causal", prefix_length=jnp.array([3, 3]))["pred"])
    # pred[:, 1] comes from position 0: it sees the prefix with prefix attention, only itself causally.
    assert np.abs(causal[:, 1] - bidir[:, 1]).max() > 1e-4
    assert np.abs(causal[:, 1] - prefix[:, 1]).max() > 1e-4
    np.testing.assert_allclose(model(b, attention="prefix_causal")["pred"], causal, atol=1e-6)


def test_drop_path_drops_whole_branches_per_example_only_when_training():
    """model.drop_path (fine-tuning's stochastic depth, rising linearly to the rate at the last block): off
    without train=True; with it, an example's dropped branch leaves the stream unchanged and a kept one is
    scaled by 1 / (1 - p)."""
    b = {k: jnp.asarray(v) for k, v in batch().items()}
    args = (b["patches"], b["coords"], b["grid"], b["length"])
    plain = make_backbone(dict(variant=f"Pico/{P}"))
    dropping = make_backbone(dict(variant=f"Pico/{P}", drop_path=0.999))
    params = plain.init(jax.random.key(0), *args)
    np.testing.assert_array_equal(plain.apply(params, *args)[0], dropping.apply(params, *args)[0])
    _, inter = dropping.apply(params, *args, train=True, rngs={"dropout": jax.random.key(1)})
    _, kept = plain.apply(params, *args)
    # block 0 runs at rate 0 (kept), block 1 at 0.999: both its branches dropped for both examples
    np.testing.assert_allclose(inter["block_0"], kept["block_0"], atol=1e-6)
    np.testing.assert_allclose(inter["block_1"], inter["block_0"], atol=1e-6)
    with pytest.raises(Exception, match="dropout"):
        dropping.apply(params, *args, train=True)  # stochastic depth needs its rng


def test_drop_path_is_refused_with_scan_and_in_pretraining():
    with pytest.raises(UserError, match="model.scan=True"):
        validate_model_config(dict(variant="Pico/2", drop_path=0.1, scan=True), 2, 16)
    cfg = default_pretrain_config()
    cfg.model.update(variant="Pico/14", drop_path=0.1)
    with pytest.raises(UserError, match="fine-tuning setting"):
        validate_pretrain_config(cfg, num_devices=1)
