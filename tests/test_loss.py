import jax
import jax.numpy as jnp
import numpy as np
import pytest

from naraim.model.model import make_model
from naraim.objectives.config import default_loss_config
from naraim.objectives.mse import loss_weights, next_patch_loss, per_patch_error
from naraim.objectives.objective import MSE, Diffusion, first_target, make_objective
from naraim.objectives.targets import patch_targets, unnormalize
from naraim.train.step import draw_prefix


def test_norm_pix_targets_are_standardised_per_patch():
    patches = jax.random.randint(jax.random.PRNGKey(0), (2, 5, 48), 0, 256).astype(jnp.uint8)
    t = patch_targets(patches, norm_pix=True)
    np.testing.assert_allclose(t.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(t.std(-1), 1.0, atol=1e-3)
    raw = patch_targets(patches, norm_pix=False)
    np.testing.assert_allclose(raw, np.asarray(patches, np.float32) / 255 * 2 - 1, atol=1e-6)


def test_unit_raw_targets_are_pixels_in_0_1():
    """NARAIM's no_norm row: raw pixels / 255, in [0, 1] (the reference), not [-1, 1]."""
    patches = jnp.asarray([[[0, 51, 255]]], jnp.uint8)
    unit = np.asarray(patch_targets(patches, norm_pix=False, raw_scale="unit"))
    np.testing.assert_allclose(unit, [[[0.0, 0.2, 1.0]]], atol=1e-7)
    assert unit.min() >= 0 and unit.max() <= 1


def test_per_image_and_per_patch_means_by_hand():
    """Image 0 has 4 targets with error 1 each, image 1 has 1 target with error 4."""
    patches = jnp.zeros((2, 6, 3), jnp.uint8)
    w = loss_weights(jnp.array([6, 3]), jnp.array([2, 2]), 6)  # targets 2..5 and 2
    pred = jnp.zeros((2, 6, 3)).at[0].set(1.0).at[1].set(2.0)  # raw unit targets are 0
    per_patch = float(next_patch_loss(pred, patches, w, False, "unit", "per_patch"))
    per_image = float(next_patch_loss(pred, patches, w, False, "unit", "per_image"))
    assert per_patch == pytest.approx((4 * 1 + 1 * 4) / 5)
    assert per_image == pytest.approx((1 + 4) / 2)
    # an image without targets (length 1) is left out of the per-image mean
    w3 = jnp.concatenate([w, jnp.zeros((1, 6))])
    pred3 = jnp.concatenate([pred, jnp.full((1, 6, 3), 9.0)])
    patches3 = jnp.zeros((3, 6, 3), jnp.uint8)
    assert float(next_patch_loss(pred3, patches3, w3, False, "unit", "per_image")) == pytest.approx(2.5)
    # an all-padding example (no targets at all) keeps every average finite
    empty = jnp.zeros((2, 6))
    for average in ("per_patch", "per_image", "fixed_count"):
        assert float(next_patch_loss(pred, patches, empty, False, "unit", average, slots=5)) == 0.0


def test_fixed_count_divides_the_summed_errors_by_batch_times_slots():
    """The NARAIM reference before f8d1e65: jnp.mean over the masked [B, N-1, K] errors, so every target
    weighs 1 / (B (N - 1)) whatever the prefixes and lengths (with an SOS token, N slots)."""
    patches = jnp.zeros((2, 6, 3), jnp.uint8)
    w = loss_weights(jnp.array([6, 3]), jnp.array([2, 2]), 6)  # 4 targets with error 1, 1 with error 4
    pred = jnp.zeros((2, 6, 3)).at[0].set(1.0).at[1].set(2.0)
    fixed = float(next_patch_loss(pred, patches, w, False, "unit", "fixed_count", slots=5))
    assert fixed == pytest.approx((4 * 1 + 1 * 4) / (2 * 5))
    assert float(next_patch_loss(pred, patches, w, False, "unit", "fixed_count", slots=6)) == pytest.approx(
        8 / 12
    )
    with pytest.raises(ValueError, match="slots"):
        next_patch_loss(pred, patches, w, False, "unit", "fixed_count")


def test_weights_cover_predicted_real_patches_only():
    w = loss_weights(jnp.array([4, 2]), jnp.array([1, 0]), 5)
    np.testing.assert_array_equal(w, [[0, 1, 1, 1, 0], [1, 1, 0, 0, 0]])


def test_loss_ignores_padding_and_prefix():
    rng = np.random.default_rng(0)
    patches = jnp.asarray(rng.integers(0, 256, (2, 6, 12)), jnp.uint8)
    length, first = jnp.array([5, 3]), jnp.array([2, 1])
    w = loss_weights(length, first, 6)
    target = patch_targets(patches, True)
    pred = target + 1.0  # error 1 on every patch
    # corrupt everything outside the weighted patches: the loss must not change
    pred = jnp.where(w[..., None] > 0, pred, 1e6)
    assert float(next_patch_loss(pred, patches, w, True)) == pytest.approx(1.0)
    # error 3 on one weighted patch among 3 + 2 = 5 -> (4*1 + 9) / 5
    pred = pred.at[0, 3].add(2.0)
    assert float(next_patch_loss(pred, patches, w, True)) == pytest.approx((4 + 9) / 5)


def test_prefix_lengths_in_range():
    length = jnp.array([1, 2, 5, 64] * 256)
    k, first = draw_prefix(jax.random.PRNGKey(3), length, "prefix_causal", False)
    k = np.asarray(k)
    assert np.all(k >= 1) and np.all(k <= np.maximum(np.asarray(length) - 1, 1))
    assert set(np.unique(k[np.asarray(length) == 5])) == {1, 2, 3, 4}
    np.testing.assert_array_equal(first, k)
    none, first = draw_prefix(jax.random.PRNGKey(3), length, "causal", sos_token=True)
    assert none is None and int(first.max()) == 0


@pytest.mark.parametrize("norm_pix", [True, False])
@pytest.mark.parametrize("raw_scale", ["unit", "symmetric"])
@pytest.mark.parametrize("pixel_scale", ["unit", "imagenet"])
def test_unnormalize_inverts_patch_targets(norm_pix, raw_scale, pixel_scale):
    patches = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 3, 12)), jnp.uint8)
    targets = patch_targets(patches, norm_pix, raw_scale, pixel_scale)
    pixels = unnormalize(targets, patches, norm_pix, raw_scale, pixel_scale)
    np.testing.assert_allclose(pixels, patches.astype(np.float32) / 255.0, atol=1e-5)


def test_imagenet_targets_normalise_the_standardised_patch():
    """loss.target_pixel_scale='imagenet' (l3m's AIMv1): each patch of the mean/std-standardised image,
    standardised over its values; with unequal channel scales this differs from the patches of x / 255."""
    patches = jnp.asarray(np.random.default_rng(1).integers(0, 256, (1, 2, 12)), jnp.uint8)
    x = np.asarray(patches, np.float64).reshape(1, 2, 4, 3) / 255.0
    x = ((x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])).reshape(1, 2, 12)
    expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(patch_targets(patches, True, pixel_scale="imagenet"), expected, atol=1e-5)
    assert not np.allclose(patch_targets(patches, True, pixel_scale="unit"), expected, atol=1e-3)


def test_targets_of_an_empty_batch_keep_their_shape():
    """Evaluation asks for the pixels of its first eval.num_images examples, which may be none."""
    empty = jnp.zeros((0, 4, 12), jnp.uint8)
    for pixel_scale in ("unit", "imagenet"):
        assert patch_targets(empty, True, pixel_scale=pixel_scale).shape == (0, 4, 12)
        assert unnormalize(jnp.zeros((0, 4, 12)), empty, True, pixel_scale=pixel_scale).shape == (0, 4, 12)


def test_the_objective_is_chosen_once_and_gives_the_error_the_step_uses():
    """make_objective picks MSE or Diffusion from loss.objective; MSE's error is per_patch_error of the
    model's prediction; the first target is 0 with an SOS token, else 1."""

    model = make_model(dict(variant="Pico/2", attention="causal"))
    loss = default_loss_config()
    assert isinstance(make_objective(model, loss), MSE)
    loss_d = default_loss_config()
    loss_d.objective = "diffusion"
    assert isinstance(make_objective(model, loss_d), Diffusion)
    assert (first_target(True), first_target(False)) == (0, 1)

    patches = jax.random.randint(jax.random.PRNGKey(0), (2, 4, 12), 0, 256).astype(jnp.uint8)
    coords = jnp.stack(jnp.meshgrid(jnp.arange(2), jnp.arange(2), indexing="ij"), -1).reshape(1, 4, 2)
    batch = {
        "patches": patches,
        "coords": jnp.broadcast_to(coords, (2, 4, 2)),
        "grid": jnp.full((2, 2), 2),
        "length": jnp.array([4, 3]),
    }
    objective = make_objective(model, loss)
    assert objective.init_head_inputs(1, 4, 12) is None
    params = model.init(jax.random.PRNGKey(1), batch)["params"]
    pred = model.apply({"params": params}, batch)["pred"]
    expected = per_patch_error(pred, patches, loss.norm_pix, loss.raw_scale, loss.target_pixel_scale)
    np.testing.assert_array_equal(objective.error(params, batch, jax.random.PRNGKey(2)), expected)
    err, plotted = objective.evaluate(params, batch)
    np.testing.assert_array_equal(err, expected)  # causal model: evaluation sees the same prediction
    np.testing.assert_array_equal(plotted, pred)
