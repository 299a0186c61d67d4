"""Image completion: deterministic under a seed, never changes the prefix, never sees what it generates."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from probe_helpers import pretrain_workdir

from naraim.errors import UserError
from naraim.generate import (
    completion_images,
    generate_from_run,
    make_complete_fn,
    prefix_lengths,
    save_completion_grid,
    to_uint8,
)
from naraim.model.model import make_head, make_model
from naraim.objectives import diffusion
from naraim.objectives.config import default_loss_config

B, N, P = 3, 12, 4
K = P * P * 3


def config(objective, attention="causal", sos=True):
    cfg = ml_collections.ConfigDict()
    cfg.model = dict(
        variant=f"Pico/{P}",
        posemb="rope_2d",
        attention=attention,
        sos_token=sos,
        head="denoising" if objective == "diffusion" else "linear",
        denoiser=dict(depth=1, width=32, heads=2, mlp_ratio=2.0),
    )
    cfg.loss = default_loss_config()
    cfg.loss.update(norm_pix=False, objective=objective)
    cfg.loss.diffusion.append_gamma = True
    return cfg


def batch():
    rng = np.random.default_rng(0)
    grid = np.array([[3, 4], [2, 5], [4, 2]], np.int32)
    length = grid.prod(1).astype(np.int32)
    coords = np.zeros((B, N, 2), np.int32)
    patches = np.zeros((B, N, K), np.uint8)
    for i, cols in enumerate(grid[:, 1]):
        coords[i, : length[i]] = np.stack(np.divmod(np.arange(length[i]), cols), -1)
        patches[i, : length[i]] = rng.integers(0, 256, (length[i], K))
    return {"patches": patches, "coords": coords, "grid": grid, "length": length}


def setup(objective, attention="causal", sos=True):
    cfg = config(objective, attention, sos)
    model = make_model(cfg.model)
    data = {k: jnp.asarray(v) for k, v in batch().items()}
    head_inputs = None
    if objective == "diffusion":
        head_inputs = diffusion.head_inputs(jnp.zeros((B, N, K)), jnp.zeros((B, N)), True)
    params = model.init(jax.random.key(0), data, head_inputs=head_inputs)["params"]
    return make_complete_fn(model, cfg, num_steps=4), params, data


@pytest.mark.parametrize(
    "objective,attention,sos",
    [("mse", "causal", False), ("mse", "prefix_causal", False), ("diffusion", "causal", True)],
)
@pytest.mark.slow
def test_completion_deterministic_prefix_unchanged_no_peeking(objective, attention, sos):
    complete, params, data = setup(objective, attention, sos)
    prefix = jnp.asarray(prefix_lengths(np.asarray(data["length"]), 0.5))
    out = np.asarray(complete(params, data, prefix, jax.random.key(1)))
    original = np.asarray(data["patches"])
    position = np.arange(N)[None, :]
    given = position < np.asarray(prefix)[:, None]
    padding = position >= np.asarray(data["length"])[:, None]
    np.testing.assert_array_equal(out[given | padding], original[given | padding])
    assert out.dtype == np.uint8 and (out[~given & ~padding] != original[~given & ~padding]).any()
    np.testing.assert_array_equal(np.asarray(complete(params, data, prefix, jax.random.key(1))), out)
    # The original content after the prefix is never seen.
    hidden = jnp.where(jnp.asarray(given | padding)[..., None], data["patches"], 7)
    again = np.asarray(complete(params, dict(data, patches=hidden), prefix, jax.random.key(1)))
    np.testing.assert_array_equal(again, out)
    if objective == "diffusion":
        other = np.asarray(complete(params, data, prefix, jax.random.key(2)))
        assert (other != out).any()


@pytest.mark.parametrize(
    "objective,attention,sos",
    [("mse", "causal", False), ("mse", "prefix_causal", False), ("diffusion", "causal", True)],
)
@pytest.mark.slow
def test_every_generated_patch_was_fed_back(objective, attention, sos):
    """Teacher forcing: one forward pass over the completed sequence predicts (or, for diffusion, samples
    with the same noise) exactly the generated patch at every generated position, so each patch was made
    from the patches generated before it."""
    complete, params, data = setup(objective, attention, sos)
    cfg = config(objective, attention, sos)
    model = make_model(cfg.model)
    prefix = jnp.asarray(prefix_lengths(np.asarray(data["length"]), 0.5))
    rng = jax.random.key(1)
    out = complete(params, data, prefix, rng)
    inputs = dict(data, patches=out)
    kw = {"prefix_length": prefix if attention == "prefix_causal" else None}
    if objective == "mse":
        pred = model.apply({"params": params}, inputs, **kw)["pred"]
    else:
        zeros = diffusion.head_inputs(jnp.zeros((B, N, K)), jnp.zeros((B, N)), True)
        aligned = model.apply({"params": params}, inputs, head_inputs=zeros, **kw)["aligned"]
        head = make_head(model.config)

        def sample(j):
            def denoise(x_t, gamma):
                extra = diffusion.head_inputs(x_t[:, None], gamma[:, None], True)
                return head.apply({"params": params["head"]}, aligned[:, j][:, None], **extra)[:, 0]

            return diffusion.ddpm_sample(jax.random.fold_in(rng, j), denoise, (B, K), 4, "x0")

        pred = jnp.stack([sample(j) for j in range(N)], axis=1)
    forced = np.asarray(to_uint8(pred, data["patches"], False, cfg.loss.raw_scale))
    generated = 0
    for i in range(B):
        for j in range(int(prefix[i]), int(data["length"][i])):
            np.testing.assert_array_equal(
                forced[i, j], np.asarray(out)[i, j], err_msg=f"example {i} patch {j}"
            )
            generated += 1
    assert generated == int(np.sum(np.asarray(data["length"]) - np.asarray(prefix)))


def test_prefix_lengths_and_bidirectional_rejected():
    np.testing.assert_array_equal(prefix_lengths(np.array([12, 10, 1, 7]), 0.5), [6, 5, 1, 3])
    with pytest.raises(UserError, match="prefix_fraction"):
        prefix_lengths(np.array([4]), 1.0)
    cfg = config("mse", attention="bidirectional")
    with pytest.raises(UserError, match="causal"):
        make_complete_fn(make_model(cfg.model), cfg)


def test_completion_grid_png(tmp_path):
    data = batch()
    prefix = prefix_lengths(data["length"], 0.5)
    rows = completion_images(data["patches"], data, prefix, P)
    assert [r[0].shape for r in rows] == [(12, 16, 3), (8, 20, 3), (16, 8, 3)]
    # 3x4 grid, 6 patches given: row 0 and the left half of row 1 (pixels 4..8, 0..8) are shown.
    prefix_image, completion, original = rows[0]
    assert np.all(prefix_image[8:] == 0.5) and np.all(prefix_image[4:8, 8:] == 0.5)
    np.testing.assert_array_equal(prefix_image[:4], original[:4])
    np.testing.assert_array_equal(completion, original)
    path = tmp_path / "grid.png"
    save_completion_grid(rows, str(path), "test")
    assert path.stat().st_size > 1000


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["naraim", "darl"])
def test_generate_from_a_saved_run_writes_the_grid(tmp_path, variant):
    """The script's path: a checkpointed tiny pre-training (MSE or diffusion) -> completions PNG."""
    from PIL import Image

    out = generate_from_run(
        pretrain_workdir(variant), str(tmp_path / "c.png"), num_images=2, num_steps=3, seed=0
    )
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 0 and image.size[1] > 0
    with pytest.raises(UserError):
        generate_from_run(pretrain_workdir(variant), str(tmp_path / "d.png"), prefix_fraction=1.5)
