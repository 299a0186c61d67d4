"""naraim against outputs the papers' own code computed (tests/fixtures/*_reference.*, written by
scripts/record_reference.py from the NARAIM authors' code, Apple's ml-l3m and ml-aim at the commits the JSON
files name). Tolerances are stated where they are not exact, with the reason."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from probe_helpers import ROOT, load_config

from naraim.data.decode import decode_image
from naraim.data.tokens import to_tokens
from naraim.data.transforms import apply_transforms, make_transform
from naraim.infra.schedules import naraim_ref_schedule
from naraim.model.attention import SelfAttention, attention_mask
from naraim.model.pixels import scale_pixels
from naraim.model.posemb import Fractional, absolute_sincos_2d
from naraim.objectives.mse import loss_weights, next_patch_loss, per_patch_error
from naraim.objectives.targets import patch_targets
from naraim.probe.heads import ProbeHead, ReferenceProbeHead

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
PHOTOS = os.path.join(ROOT, "..", "shared", "datasets", "clothing-small")
needs_photos = pytest.mark.skipif(
    not os.path.isdir(PHOTOS), reason="../shared/datasets/clothing-small absent"
)


def fixture(part: str) -> tuple[dict, dict]:
    arrays = np.load(os.path.join(FIXTURES, f"{part}_reference.npz"))
    meta = json.load(open(os.path.join(FIXTURES, f"{part}_reference.json")))
    return {k: arrays[k] for k in arrays.files}, meta


REF, REF_META = fixture("naraim")
AIM, AIM_META = fixture("aim")


def test_fixtures_name_their_commits_and_stay_small():
    assert set(REF_META["commits"]) == {"naraim_ref", "naraim_ref_training_loss"}
    assert set(AIM_META["commits"]) == {"l3m", "ml_aim"}
    assert all(len(c) == 40 for meta in (REF_META, AIM_META) for c in meta["commits"].values())
    size = sum(os.path.getsize(os.path.join(FIXTURES, f)) for f in os.listdir(FIXTURES))
    assert size < 2e6


def _naraim_tokens(image, transforms=("native_aspect_ratio_resize",)) -> dict:
    """The photo through configs/naraim_b14.py's evaluation geometry (full-size decode, bicubic, the
    reference's grid rounding, central crop), as uint8 tokens of a 256 budget."""
    data = load_config("naraim_b14").data
    bound = [
        make_transform(
            t,
            image_size=224,
            patch_size=14,
            max_tokens=256,
            resample=data.resample,
            native_grid=data.native_grid,
            native_crop=data.native_crop,
        )
        for t in transforms
    ]
    return to_tokens(
        np.asarray(apply_transforms(image, np.random.default_rng(0), bound)), patch_size=14, max_tokens=256
    )


def _grey_level_difference(ours: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return np.abs(ours.astype(np.int16) - reference.astype(np.int16))


@needs_photos
def test_native_aspect_ratio_resize_gives_the_references_grids_and_pixels():
    """Ten photos from width/height 0.43 to 2.22 through the reference's pipeline (TensorFlow's JPEG decoder,
    NativeAspectRatioResize, patchify): naraim gives the same patch grids and coordinates, and pixels within
    the two JPEG decoders' difference: TensorFlow's decode_jpeg and libjpeg-turbo as PIL and simplejpeg call
    it differ by 1.0-1.1 grey levels on average and up to 4 on these photos (the fixture's JSON records it
    per photo); the resize adds at most one level of rounding (the next test)."""
    decoders = REF_META["measured"]["decoder_mean_abs_grey_levels"]
    for i, path in enumerate(REF_META["photos"]):
        n = int(REF["photo_length"][i])
        image = decode_image(open(os.path.join(PHOTOS, path), "rb").read(), patch_size=14)
        ours = _naraim_tokens(image)
        assert int(ours["length"]) == n, path
        np.testing.assert_array_equal(ours["coords"][:n], REF["photo_coords"][i][:n], err_msg=path)
        diff = _grey_level_difference(ours["patches"][:n], REF["photo_patches"][i][:n])
        assert diff.mean() < decoders[i] + 0.15 and np.percentile(diff, 99) <= 3 and diff.max() <= 5, path


@needs_photos
def test_the_resize_alone_matches_the_references_to_one_grey_level():
    """The same decoded pixels (PIL) through the reference's NativeAspectRatioResize (TensorFlow's bicubic
    with antialias, central crop) and naraim's (PIL's bicubic over the reference's box): at most one grey
    level apart, from rounding the reference's floats (its overshoot past [0, 1] near edges, up to 9 levels on
    these photos per the JSON, is clipped in naraim's uint8 pixels and in the fixture)."""
    for i in range(len(REF["resize_only_patches"])):
        path = REF_META["photos"][i]
        ours = _naraim_tokens(Image.open(os.path.join(PHOTOS, path)).convert("RGB"))
        n = int(ours["length"])
        diff = _grey_level_difference(ours["patches"][:n], REF["resize_only_patches"][i][:n])
        assert diff.max() <= 1 and diff.mean() < 0.2, path


@needs_photos
def test_a_reference_random_crop_through_naraims_native_resize():
    """The reference's RandomCrop (seeded) chose these boxes; the same boxes through naraim's native resize
    give the reference's patches, and each box is one naraim's random_crop_native can draw (area share in
    [0.4, 1], width/height in [0.75, 1.33], at least 224^2 pixels)."""
    for i, (top, left, h, w) in enumerate(REF["crop_box"]):
        path = REF_META["photos"][i]
        image = decode_image(open(os.path.join(PHOTOS, path), "rb").read(), patch_size=14)
        width, height = image.size
        assert 0.4 - 0.01 <= h * w / (width * height) <= 1.0 and 0.75 - 0.01 <= w / h <= 1.33 + 0.01
        assert h * w >= 224 * 224
        ours = _naraim_tokens(image.crop((left, top, left + w, top + h)))
        n = int(ours["length"])
        np.testing.assert_array_equal(ours["coords"][:n], REF["crop_coords"][i][:n])
        assert not REF["crop_patches"][i][n:].any()
        diff = _grey_level_difference(ours["patches"][:n], REF["crop_patches"][i][:n])
        decoder = REF_META["measured"]["decoder_mean_abs_grey_levels"][i]
        assert diff.mean() < decoder + 0.15 and np.percentile(diff, 99) <= 3 and diff.max() <= 5, path


def test_prefix_causal_mask_and_loss_targets_equal_the_references():
    """Its attention matrix and loss mask for given prefixes: naraim's mask equals it on every real query
    (the reference does not mask padding keys, but real queries never reach them), and naraim's loss
    weights select the same targets (its loss mask index i weighs the prediction of patch i + 1)."""
    cases = [
        (k, n, 16, REF[f"mask_attention_{k}_{n}"], REF[f"mask_loss_{k}_{n}"])
        for k, n in [(1, 16), (5, 16), (15, 16), (3, 9), (8, 9)]
    ]
    for i in range(len(REF["photo_length"])):
        attention = np.unpackbits(REF["photo_attention_bits"][i])[: 256 * 256].reshape(256, 256)
        cases.append(
            (
                int(REF["photo_prefix"][i]),
                int(REF["photo_length"][i]),
                256,
                attention,
                REF["photo_loss_mask"][i],
            )
        )
    for k, n, budget, attention, loss_mask in cases:
        ours = np.asarray(attention_mask(jnp.array([n]), budget, "prefix_causal", jnp.array([k])))[0, 0]
        np.testing.assert_array_equal(ours[:n, :n], attention[:n, :n].astype(bool), err_msg=f"k={k} n={n}")
        assert not ours[:n, n:].any()  # real queries never see padding keys
        weights = np.asarray(loss_weights(jnp.array([n]), jnp.array([k]), budget))[0]
        np.testing.assert_array_equal(weights[1:], loss_mask[:-1], err_msg=f"k={k} n={n}")
        assert weights[0] == 0


def test_absolute_sincos_table_is_the_references_with_channels_permuted():
    """The reference interleaves sin and cos per axis ([sin w0, cos w0, sin w1, ...]); naraim puts the sines
    first ([sin w0, sin w1, ..., cos w0, ...]). Both put the row half first and use the same frequencies, so
    the tables are one fixed permutation of the channels apart (what the learned patch embedding absorbs)."""
    dim, half = 32, 16
    ours = np.asarray(absolute_sincos_2d(jnp.asarray(REF["grid_coords"], jnp.int32), dim))
    order = [
        axis * half + (i // 2 if i % 2 == 0 else half // 2 + i // 2) for axis in (0, 1) for i in range(half)
    ]
    np.testing.assert_allclose(ours[..., order], REF["absolute_table"], atol=2e-6)


def _fractional_params():
    p = {k.split("param", 1)[1]: v for k, v in REF.items() if k.startswith("fractional_param")}
    get = lambda layer, leaf: jnp.asarray(p[f"['{layer}']['{leaf}']"])  # noqa: E731
    return {
        "params": {
            name: {"kernel": get(src, "kernel"), "bias": get(src, "bias")}
            for name, src in (("row", "Dense_0"), ("col", "Dense_1"))
        }
    }


def test_fractional_embedding_with_max_index_is_the_references():
    """model.fractional_scale='max_index' divides by the largest index as the reference does, with its Dense
    parameters: the same embedding on every grid with more than one row and column; on a one-row grid the
    reference's 0/0 gives NaN, naraim 0."""
    coords = jnp.asarray(REF["grid_coords"], jnp.int32)
    grids = [(16, 16), (12, 21), (7, 36), (1, 4)]
    grid = jnp.asarray(grids, jnp.int32)
    ours = np.asarray(Fractional(32, "max_index").apply(_fractional_params(), coords, grid))
    for i, (rows, cols) in enumerate(grids):
        if rows > 1 and cols > 1:
            np.testing.assert_allclose(ours[i], REF["fractional_out"][i], rtol=1e-5, atol=1e-6)
        else:
            assert np.isnan(REF["fractional_out"][i]).all() and np.isfinite(ours[i]).all()
    counts = np.asarray(Fractional(32, "count").apply(_fractional_params(), coords, grid))
    assert not np.allclose(counts[0], REF["fractional_out"][0], atol=1e-3)  # the NaViT scale differs


def test_naraim_ref_schedule_is_the_references_at_every_step():
    s = REF_META["settings"]["schedule"]
    fn = naraim_ref_schedule(s["peak"], s["total"], s["warmup"], s["rate"], s["cooldown"], min_lr=0.0)
    ours = np.asarray(jax.vmap(fn)(jnp.arange(s["total"] + 1)))
    np.testing.assert_allclose(ours, REF["schedule"], rtol=1e-5, atol=1e-12)  # float32 rounding


def test_reference_probe_head_gives_the_references_logits():
    """ReferenceProbeHead with the reference ClassificationHead's parameters (probe_query, flax's
    MultiHeadDotProductAttention, Dense) on features without padding."""
    p = {k.split("param", 1)[1]: jnp.asarray(v) for k, v in REF.items() if k.startswith("probe_param")}
    attention = {
        part: {
            leaf: p[f"['MultiHeadDotProductAttention_0']['{part}']['{leaf}']"] for leaf in ("kernel", "bias")
        }
        for part in ("query", "key", "value", "out")
    }
    params = {
        "query": p["['probe_query']"],
        "attention": attention,
        "classifier": {"kernel": p["['Dense_0']['kernel']"], "bias": p["['Dense_0']['bias']"]},
    }
    features = jnp.asarray(REF["probe_features"])
    logits = ReferenceProbeHead(num_classes=5, num_heads=4).apply(
        {"params": params}, features, jnp.full(3, 10), False
    )
    np.testing.assert_allclose(logits, REF["probe_logits"], rtol=1e-5, atol=1e-5)


def _aligned(preds: np.ndarray) -> jnp.ndarray:
    """The reference's preds[:, i] predict patch i + 1; naraim's pred[:, j] predicts patch j."""
    return jnp.asarray(np.concatenate([np.zeros_like(preds[:, :1]), preds[:, :-1]], axis=1))


def test_targets_and_both_reference_losses():
    """Normalised-pixel targets as its train_model computes them, and its loss on fixed predictions: before
    f8d1e65 (what trained the paper's models) it is loss.average='fixed_count'; at its newest commit it
    divides each image's summed error by n - k - 1, infinite for the image whose prefix is n - 1."""
    pixels = jnp.asarray(REF["loss_pixels"])
    np.testing.assert_allclose(
        np.asarray(patch_targets(pixels, True, pixel_scale="unit")), REF["loss_targets"], atol=2e-5
    )
    length, prefix = jnp.asarray(REF["loss_length"]), jnp.asarray(REF["loss_prefix"])
    w = loss_weights(length, prefix, 16)
    np.testing.assert_array_equal(np.asarray(w)[:, 1:], REF["loss_loss_masks"][:, :-1])
    preds = _aligned(REF["loss_preds"])
    fixed = float(next_patch_loss(preds, pixels, w, True, average="fixed_count", slots=15))
    assert fixed == pytest.approx(float(REF["loss_before_f8d1e65"]), rel=1e-5)
    assert np.isinf(REF["loss_head"])
    err = np.asarray(per_patch_error(preds, pixels, True))
    per_image = [
        err[i, k:n].mean()
        for i, (k, n) in enumerate(zip(REF["loss_prefix"], REF["loss_length"], strict=True))
    ]
    ours = float(next_patch_loss(preds, pixels, w, True, average="per_image"))
    assert np.isfinite(ours) and ours == pytest.approx(np.mean(per_image), rel=1e-5)


def test_l3m_targets_normalise_the_standardised_image():
    """l3m's RasterPixelLoss on its standardised image: naraim's targets with
    loss.target_pixel_scale='imagenet' are its targets up to torch's unbiased variance (their ratio is
    sqrt((var + eps) / (var * 588/587 + eps)) per patch, 0.999 here); with that factor the per-patch loss is
    l3m's to 1e-5, and from x / 255 it is not."""
    pixels = AIM["aim_loss_pixels"]  # [2, 28, 28, 3] -> 4 patches of 14 x 14 x 3, raster order
    patches = jnp.asarray(np.stack([to_tokens(p, patch_size=14, max_tokens=4)["patches"] for p in pixels]))
    weights = AIM["aim_loss_mask"].astype(np.float64) * (np.arange(4) >= 1)  # its mask[:, j], j >= 1
    preds = np.asarray(_aligned(AIM["aim_loss_preds"]), np.float64)

    def loss(pixel_scale: str) -> float:
        targets = np.asarray(patch_targets(patches, True, pixel_scale=pixel_scale), np.float64)
        var = np.asarray(scale_pixels(patches, pixel_scale), np.float64).var(-1, keepdims=True)
        targets *= np.sqrt((var + 1e-6) / (var * 588 / 587 + 1e-6))  # torch's unbiased variance
        err = ((preds - targets) ** 2).mean(-1)
        return float((err * weights).sum() / weights.sum())

    assert loss("imagenet") == pytest.approx(float(AIM["aim_loss"]), rel=1e-5)
    assert loss("unit") != pytest.approx(float(AIM["aim_loss"]), rel=1e-4)
    ours = float(
        next_patch_loss(jnp.asarray(preds), patches, jnp.asarray(weights), True, pixel_scale="imagenet")
    )
    assert ours == pytest.approx(float(AIM["aim_loss"]), rel=2e-3)  # without the factor: within 0.2 %


def test_separate_qkv_xavier_bounds_are_l3ms():
    """weight_init='xavier_separate_qkv' draws q, k and v each as l3m's Linear(D, D) does: bound
    sqrt(6 / 2D), the spread l3m's weights have; the fused 'xavier' (MAE, DARL) has sqrt(6 / 4D)."""
    stats = AIM_META["measured"]["l3m_init"]
    dim, heads = AIM_META["settings"]["l3m_init"]["dim"], AIM_META["settings"]["l3m_init"]["heads"]
    x = jnp.zeros((1, 4, dim))
    mask = attention_mask(jnp.array([4]), 4, "causal")
    for init, bound in (("xavier_separate_qkv", np.sqrt(6 / (2 * dim))), ("xavier", np.sqrt(6 / (4 * dim)))):
        params = SelfAttention(heads, weight_init=init, use_bias=False).init(jax.random.PRNGKey(0), x, mask)
        qkv = np.asarray(params["params"]["qkv"]["kernel"])
        for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
            w = qkv[:, i].reshape(dim, dim)
            assert bound * 0.99 < np.abs(w).max() <= bound
            l3m_max, l3m_std, _ = stats[f"blocks.0.attn.{name}.weight"]
            if init == "xavier_separate_qkv":
                assert l3m_max == pytest.approx(bound, rel=1e-3) and w.std() == pytest.approx(
                    l3m_std, rel=0.03
                )
        out = np.asarray(params["params"]["out"]["kernel"]).reshape(dim, dim)
        assert np.abs(out).max() == pytest.approx(stats["blocks.0.attn.proj.weight"][0], rel=0.01)


def test_aim_probe_head_gives_ml_aims_logits():
    """naraim's AIM probe head (ProbeHead) with ml-aim's AttentionPoolingClassifier weights (cls_token, k, v,
    linear without bias, BatchNorm running statistics) gives its logits."""
    p = {k.removeprefix("aim_probe_param."): v for k, v in AIM.items() if k.startswith("aim_probe_param.")}
    dim, heads = 64, 4
    params = {
        "query": jnp.asarray(p["cls_token"].reshape(dim)),
        "key": {"kernel": jnp.asarray(p["k.weight"].T.reshape(dim, heads, dim // heads))},
        "value": {"kernel": jnp.asarray(p["v.weight"].T.reshape(dim, heads, dim // heads))},
        "classifier": {"kernel": jnp.asarray(p["linear.weight"].T)},
    }
    stats = {"bn": {"mean": jnp.asarray(p["bn.running_mean"]), "var": jnp.asarray(p["bn.running_var"])}}
    features = jnp.asarray(AIM["aim_probe_features"])
    logits = ProbeHead(5, heads).apply(
        {"params": params, "batch_stats": stats}, features, jnp.full(3, 10), False
    )
    np.testing.assert_allclose(logits, AIM["aim_probe_logits"], rtol=1e-4, atol=1e-5)
