"""Fine-tuning and linear probing: layer-wise lr decay, mixup/CutMix on patch sequences, descriptors, runs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from probe_helpers import pretrain_workdir, tiny_probe_config

from naraim.infra.checkpoint import restore_params
from naraim.probe.finetune import cutmix, layer_scales, mix_batch, mixup
from naraim.probe.heads import pool_tokens
from naraim.probe.runner import load_pretrained, run_probe


def test_layer_scales_follow_depth():
    leaf = np.zeros((2, 2))
    params = {
        "backbone": {
            "embed": {"kernel": leaf},
            "block_0": {"w": leaf},
            "block_1": {"w": leaf},
            "encoder_norm": {"s": leaf},
        },
        "head": {"classifier": {"kernel": leaf}},
    }
    s = layer_scales(params, depth=2, decay=0.5)
    assert s["backbone"]["embed"]["kernel"] == 0.125
    assert s["backbone"]["block_0"]["w"] == 0.25 and s["backbone"]["block_1"]["w"] == 0.5
    assert s["backbone"]["encoder_norm"]["s"] == 1.0 and s["head"]["classifier"]["kernel"] == 1.0
    scanned = layer_scales({"backbone": {"blocks": {"w": np.zeros((3, 4, 5))}}}, depth=3, decay=0.5)
    np.testing.assert_allclose(scanned["backbone"]["blocks"]["w"].reshape(-1), [0.125, 0.25, 0.5])
    assert scanned["backbone"]["blocks"]["w"].shape == (3, 1, 1)


def _grid_batch(grids, n=12, k=3, seed=0):
    """Raster-order sequences for images with the given (rows, cols) grids, random uint8 pixels."""
    rng = np.random.default_rng(seed)
    b = len(grids)
    coords = np.zeros((b, n, 2), np.int32)
    patches = np.zeros((b, n, k), np.uint8)
    for i, (r, c) in enumerate(grids):
        rc = np.stack(np.meshgrid(np.arange(r), np.arange(c), indexing="ij"), -1).reshape(-1, 2)
        coords[i, : r * c] = rc
        patches[i, : r * c] = rng.integers(0, 256, (r * c, k))
    return {
        "patches": jnp.asarray(patches),
        "coords": jnp.asarray(coords),
        "grid": jnp.asarray(np.array(grids, np.int32)),
        "length": jnp.asarray(np.array([r * c for r, c in grids], np.int32)),
    }


def test_mixup_on_equal_grids_is_pixel_mixup():
    batch = _grid_batch([(3, 4), (3, 4)])
    patches, share = mixup(batch, jnp.float32(0.75))
    a, b = np.asarray(batch["patches"], np.float32), np.roll(np.asarray(batch["patches"], np.float32), 1, 0)
    np.testing.assert_allclose(np.asarray(patches[:, :12]), np.round(0.75 * a + 0.25 * b)[:, :12], atol=0)
    np.testing.assert_allclose(share, [0.25, 0.25])


def test_mixup_and_cutmix_mix_by_grid_position_across_aspect_ratios():
    batch = _grid_batch([(2, 3), (3, 2)])  # partner of example 0 is example 1 (rolled by one)
    _, share = mixup(batch, jnp.float32(0.5))
    # (2,3) vs (3,2): 4 of the 6 positions exist in both grids
    np.testing.assert_allclose(share, [0.5 * 4 / 6, 0.5 * 4 / 6])
    p = np.asarray(batch["patches"])
    replaced_any = False
    for seed in range(5):
        patches, share = cutmix(batch, jnp.float32(0.3), jax.random.PRNGKey(seed))
        q = np.asarray(patches)
        for i, j in ((0, 1), (1, 0)):  # example i, partner j
            rows, cols = batch["grid"][j]
            changed = 0
            for t in range(int(batch["length"][i])):
                r, c = np.asarray(batch["coords"][i, t])
                if not np.array_equal(q[i, t], p[i, t]):
                    # a replaced token holds the partner's patch at the same (row, col)
                    assert r < rows and c < cols and np.array_equal(q[i, t], p[j, r * cols + c])
                    changed += 1
            assert share[i] == pytest.approx(changed / int(batch["length"][i]))
            replaced_any |= changed > 0
        assert np.array_equal(q[:, 6:], p[:, 6:])  # padding untouched
    assert replaced_any


def test_mixed_targets_stay_distributions():
    batch = {**_grid_batch([(3, 4)] * 4), "label": jnp.arange(4)}
    targets = jax.nn.one_hot(batch["label"], 5)
    for alphas in ((0.8, 0.0), (0.0, 1.0), (0.8, 1.0)):
        mixed, t = mix_batch(jax.random.PRNGKey(1), batch, targets, *alphas, prob=1.0)
        np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)
        assert mixed["patches"].dtype == jnp.uint8
        share = 1 - np.asarray(t)[np.arange(4), np.arange(4)]
        assert np.all(share > 0)  # with prob=1 every example got some of its partner


def test_last_token_descriptor_reads_the_last_real_token():
    feats = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
    out = pool_tokens(feats, jnp.array([2, 4]), "last")
    np.testing.assert_array_equal(out, np.stack([feats[0, 1], feats[1, 3]]))
    mean = pool_tokens(feats, jnp.array([2, 4]), "mean")
    np.testing.assert_allclose(mean[0], feats[0, :2].mean(0))


@pytest.fixture(scope="module")
def workdir():
    return pretrain_workdir("naraim")


@pytest.mark.slow
def test_finetune_trains_the_whole_network_end_to_end(workdir, tmp_path):
    cfg = tiny_probe_config(workdir, "finetune")
    cfg.finetune.mixup_alpha = 0.8
    cfg.finetune.cutmix_alpha = 1.0
    cfg.model.drop_path = 0.1  # stochastic depth: the step passes its dropout rng
    cfg.checkpoint_every = 6
    results = run_probe(cfg, str(tmp_path))
    assert results["num_examples"] == 24
    assert json.loads((tmp_path / "results.json").read_text())["top1"] == results["top1"]
    metrics = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [m["step"] for m in metrics if m["split"] == "train"] == [3, 6]
    assert all(np.isfinite(m["loss"]) for m in metrics if "loss" in m)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["protocol"] == "finetune" and saved["attention"] == "bidirectional"
    # every backbone parameter moved away from the pre-trained one (layer-wise decay scales, never stops)
    tuned, _, step = restore_params(str(tmp_path))
    pretrained, _, _ = load_pretrained(workdir)
    assert step == 6 and set(tuned) == {"backbone", "head"}
    flat = jax.tree_util.tree_leaves_with_path(pretrained)
    assert len(flat) == len(jax.tree.leaves(tuned["backbone"]))
    for (path, before), after in zip(flat, jax.tree.leaves(tuned["backbone"]), strict=True):
        assert not np.array_equal(before, after), jax.tree_util.keystr(path)


@pytest.mark.slow
def test_linear_probe_end_to_end(workdir, tmp_path):
    cfg = tiny_probe_config(workdir, "linear")
    results = run_probe(cfg, str(tmp_path))
    assert results["num_examples"] == 24 and 0.0 <= results["top1"] <= results["top5"] <= 1.0
    assert (tmp_path / "accuracy_by_aspect_ratio.png").exists()
    assert load_pretrained(workdir)[2] == 2
