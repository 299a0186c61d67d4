"""Model forward pass: predictions aligned to targets (with and without SOS), heads, named intermediates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from naraim.model.model import make_model

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


def build(**cfg):
    model = make_model(dict(variant=f"Pico/{P}", attention="causal", **cfg))
    params = model.init(jax.random.key(0), batch())
    return model, params


def perturbed(b: dict, j: int) -> dict:
    b = dict(b, patches=b["patches"].copy())
    b["patches"][:, j] = 255 - b["patches"][:, j]
    return b


def changed_preds(model, params, j: int) -> np.ndarray:
    """Target positions whose prediction changes when patch j is changed (first example, all real)."""
    b = batch()
    diff = np.abs(np.asarray(model.apply(params, perturbed(b, j))["pred"] - model.apply(params, b)["pred"]))
    return np.flatnonzero(diff[0].max(axis=-1) > 1e-6)


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_prediction_of_patch_j_uses_only_patches_before_j(head):
    model, params = build(head=head, head_depth=2, head_width=32)
    out = model.apply(params, batch())
    assert out["pred"].shape == (2, N, P * P * 3) and out["pred"].dtype == jnp.float32
    np.testing.assert_array_equal(out["pred"][:, 0], 0)
    np.testing.assert_array_equal(out["aligned"][:, 1:], out["encoded"][:, :-1])
    for j in (0, 3, 6):
        np.testing.assert_array_equal(changed_preds(model, params, j), np.arange(j + 1, N))


def test_sos_token_predicts_every_patch_from_the_past_only():
    model, params = build(sos_token=True)
    assert params["params"]["backbone"]["sos"].shape == (64,)
    out = model.apply(params, batch())
    np.testing.assert_array_equal(out["aligned"], out["encoded"])
    # pred[:, 0] comes from the SOS alone: the same for any image.
    np.testing.assert_allclose(out["pred"][0, 0], out["pred"][1, 0], atol=1e-6)
    assert np.abs(np.asarray(out["pred"][0, 0])).max() > 0
    for j in (0, 3, 6):
        np.testing.assert_array_equal(changed_preds(model, params, j), np.arange(j + 1, N))
    # The last patch is never input: changing it changes nothing.
    assert changed_preds(model, params, N - 1).size == 0


def test_intermediates_by_name():
    model, params = build()
    out = model.apply(params, batch())
    assert {"pred", "aligned", "embed", "block_0", "block_1", "encoded"} <= set(out)
    assert all(out[k].shape == (2, N, 64) for k in ("embed", "block_0", "block_1", "encoded"))
    assert not np.allclose(out["block_0"], out["block_1"])


def test_attention_override_and_prefix():
    model, params = build()
    b = batch()
    causal = model.apply(params, b)["pred"]
    bidir = model.apply(params, b, attention="bidirectional")["pred"]
    assert np.abs(np.asarray(causal - bidir)).max() > 1e-4
    prefix = model.apply(params, b, attention="prefix_causal", prefix_length=jnp.array([3, 3]))["pred"]
    # Predictions after the prefix (targets >= 4 come from positions >= 3) see the prefix bidirectionally
    # encoded, so they differ; targets inside the prefix come from prefix positions.
    np.testing.assert_allclose(prefix[:, 0], 0)
    assert np.abs(np.asarray(prefix - causal)).max() > 1e-4
