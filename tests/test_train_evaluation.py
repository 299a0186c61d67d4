import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from probe_helpers import load_config

from naraim.data.pipeline import make_eval_iterator
from naraim.infra.mesh import make_mesh, replicated
from naraim.model.model import make_model
from naraim.objectives.mse import loss_weights, per_patch_error
from naraim.train.evaluation import Evaluator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo_config(variant: str):
    cfg = load_config("demo", variant)
    cfg.data.image_size, cfg.data.max_tokens = 32, 16
    cfg.eval.num_examples, cfg.eval.batch_size, cfg.eval.num_images = 12, 8, 3
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["naraim", "aim"])
def test_validation_mse_and_plots(tmp_path, variant):
    cfg = demo_config(variant)
    model = make_model(cfg.model)
    mesh = make_mesh()
    it = make_eval_iterator(
        cfg.data, split=cfg.data.val_split, patch_size=8, global_batch_size=8, max_examples=12
    )
    batches = list(it)
    params = model.init(jax.random.PRNGKey(0), {k: jnp.asarray(v) for k, v in batches[0].items()})["params"]
    metrics, paths = Evaluator(model, cfg, mesh, replicated(mesh), str(tmp_path)).run(params, step=7)

    # the same number by hand: causal attention, targets 1..length-1 of the 12 valid images
    total, count = 0.0, 0.0
    for b in batches:
        pred = model.apply({"params": params}, {k: jnp.asarray(v) for k, v in b.items()}, attention="causal")[
            "pred"
        ]
        w = loss_weights(jnp.asarray(b["length"]), 1, 16) * jnp.asarray(b["valid"])[:, None]
        total += float(jnp.sum(per_patch_error(pred, jnp.asarray(b["patches"]), cfg.loss.norm_pix) * w))
        count += float(jnp.sum(w))
    assert metrics["num_targets"] == count > 0
    assert metrics["loss"] == pytest.approx(total / count, rel=1e-5)
    names = sorted(os.path.basename(p) for p in paths)
    expected = ["error_by_position_7.png", "reconstructions_7.png"]
    if variant == "aim":  # square images share one grid: also the per-patch map
        expected.insert(1, "error_grid_7.png")
    assert names == expected
    assert all(os.path.getsize(p) > 1000 for p in paths)
    assert np.isfinite(metrics["loss"])


def _targets(patches: np.ndarray, norm_pix: bool) -> np.ndarray:
    x = patches.astype(np.float64) / 255.0
    if not norm_pix:
        return x * 2.0 - 1.0
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)


@pytest.mark.slow
def test_mse_ref_is_the_reference_protocol_computed_by_hand(tmp_path):
    """mse_ref: per validation image i a prefix k ~ U{1..n-1} from rng(ref_seed, i), prefix-causal
    attention, the mean squared error of the targets k..n-1, then the mean over images; computed here one
    image at a time, apart from the evaluator's batching and helpers."""
    cfg = demo_config("naraim")
    cfg.eval.ref_seed = 3
    model, mesh = make_model(cfg.model), make_mesh()
    batches = list(
        make_eval_iterator(
            cfg.data, split=cfg.data.val_split, patch_size=8, global_batch_size=12, max_examples=12
        )
    )
    params = model.init(jax.random.PRNGKey(1), {k: jnp.asarray(v) for k, v in batches[0].items()})["params"]
    metrics, _ = Evaluator(model, cfg, mesh, replicated(mesh), str(tmp_path)).run(params, step=1)
    per_image, prefixes, summed = [], [], 0.0
    for i, (patches, coords, grid, n) in enumerate(
        zip(*(batches[0][k] for k in ("patches", "coords", "grid", "length")), strict=True)
    ):
        k = int(np.random.default_rng([3, i]).integers(1, max(int(n) - 1, 1) + 1))
        prefixes.append(k)
        example = {"patches": patches[None], "coords": coords[None], "grid": grid[None], "length": n[None]}
        example = {key: jnp.asarray(v) for key, v in example.items()}
        out = model.apply(
            {"params": params}, example, attention="prefix_causal", prefix_length=jnp.array([k])
        )
        pred = np.asarray(out["pred"][0], np.float64)
        err = ((pred - _targets(patches, cfg.loss.norm_pix)) ** 2).mean(-1)
        summed += err[k:n].sum()
        if n > k:
            per_image.append(err[k:n].mean())
    assert len(set(prefixes)) > 3 and len(per_image) == 12
    assert metrics["mse_ref"] == pytest.approx(np.mean(per_image), rel=1e-5)
    # the reference's formula before f8d1e65: summed errors over images x (N - 1) slots, N = 16
    assert metrics["mse_ref_fixed_count"] == pytest.approx(summed / (12 * 15), rel=1e-5)
    assert metrics["mse_ref"] != pytest.approx(metrics["loss"], rel=1e-3)  # not the causal all-target mean
