"""Packed rows in the model and the loss: one image per row computes today's bits, and images packed in a row
never see each other."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from probe_helpers import load_config

from naraim.data.pipeline import make_train_iterator
from naraim.infra.mesh import global_batch, make_mesh
from naraim.infra.optimizer import make_optimizer
from naraim.model.model import make_model
from naraim.model.segments import as_packed
from naraim.objectives.mse import per_patch_error
from naraim.train.step import draw_prefix, init_state, make_train_step

CASES = [
    dict(posemb="absolute_sincos_2d", attention="prefix_causal", sos_token=False),
    dict(posemb="fractional", attention="causal", sos_token=True),
    dict(posemb="learned", attention="prefix_causal", sos_token=True),
    dict(posemb="rope_1d", attention="causal", sos_token=False),
    dict(posemb="rope_2d", attention="prefix_causal", sos_token=True),
    dict(posemb="none", attention="bidirectional", sos_token=False),
]


def tiny_config(objective="mse", average="per_image", **model):
    cfg = load_config("demo", "naraim")
    cfg.batch_size, cfg.data.image_size, cfg.data.max_tokens, cfg.total_steps = 4, 32, 16, 10
    cfg.optim.warmup_steps, cfg.optim.cooldown_steps = 1, 1
    cfg.model.update(model)
    cfg.loss.average = average
    if objective == "diffusion":
        cfg.loss.objective, cfg.model.head = "diffusion", "denoising"
    return cfg


def _batch(cfg):
    it = make_train_iterator(cfg.data, patch_size=8, global_batch_size=cfg.batch_size, seed=0)
    return next(it)


def _three_steps(cfg, batch):
    mesh = make_mesh()
    model = make_model(cfg.model)
    optimizer, schedule = make_optimizer(cfg.optim, cfg.total_steps)
    state, shardings = init_state(model, optimizer, cfg, mesh)
    step = make_train_step(model, optimizer, schedule, cfg, mesh, shardings)
    batch = global_batch(batch, mesh)
    out = []
    for _ in range(3):
        state, metrics = step(state, batch)
        out.append((np.asarray(metrics["loss"]), np.asarray(metrics["grad_norm"])))
    return out, jax.tree_util.tree_map(np.asarray, state["params"])


@pytest.mark.slow
@pytest.mark.parametrize(  # every position embedding, attention mode, SOS setting, objective and average
    "case,objective,average",
    [
        (CASES[0], "mse", "per_patch"),
        (CASES[1], "mse", "fixed_count"),
        (CASES[2], "diffusion", "per_image"),
        (CASES[3], "mse", "per_image"),
        (CASES[4], "mse", "per_image"),
        (CASES[5], "mse", "per_image"),
    ],
)
def test_one_image_per_packed_row_trains_to_the_same_bits(case, objective, average):
    cfg = tiny_config(objective, average, **case)
    batch = _batch(cfg)
    unpacked, params = _three_steps(cfg, batch)
    packed, packed_params = _three_steps(cfg, as_packed(batch))
    for (la, ga), (lb, gb) in zip(unpacked, packed, strict=True):
        assert la.tobytes() == lb.tobytes() and ga.tobytes() == gb.tobytes(), (unpacked, packed)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(packed_params), strict=True):
        assert a.tobytes() == b.tobytes()


def _pack_rows(batch, rows):
    """Packs the examples of an unpacked numpy batch into rows: rows = [[i, j, ...], ...] example indices."""
    n, m = batch["patches"].shape[1], max(len(r) for r in rows)
    out = {
        "patches": np.zeros((len(rows), n, batch["patches"].shape[2]), np.uint8),
        "coords": np.zeros((len(rows), n, 2), np.int32),
        "segment_ids": np.zeros((len(rows), n), np.int32),
        "positions": np.zeros((len(rows), n), np.int32),
        "grid": np.ones((len(rows), m, 2), np.int32),
        "length": np.zeros((len(rows), m), np.int32),
    }
    for r, members in enumerate(rows):
        start = 0
        for s, i in enumerate(members):
            length = int(batch["length"][i])
            span = slice(start, start + length)
            out["patches"][r, span] = batch["patches"][i, :length]
            out["coords"][r, span] = batch["coords"][i, :length]
            out["segment_ids"][r, span] = s + 1
            out["positions"][r, span] = np.arange(length)
            out["grid"][r, s], out["length"][r, s] = batch["grid"][i], length
            start += length
    return out


def _small_images(n=6):
    """Unpacked examples of at most 7 patches each, padded to 24, from synthetic images at a small size."""
    cfg = tiny_config()
    cfg.data.transforms = ("fit_to_token_budget",)
    cfg.data.max_tokens = 7
    it = make_train_iterator(cfg.data, patch_size=8, global_batch_size=n, seed=1)
    small = next(it)
    pad = 24 - small["patches"].shape[1]
    small["patches"] = np.pad(small["patches"], ((0, 0), (0, pad), (0, 0)))
    small["coords"] = np.pad(small["coords"], ((0, 0), (0, pad), (0, 0)))
    return small


@pytest.mark.parametrize("case", CASES)
def test_perturbing_one_image_of_a_packed_row_changes_no_other_image(case):
    cfg = tiny_config(**case)
    small = _small_images()
    rows = [[0, 1, 2], [3, 4, 5]]
    packed = _pack_rows(small, rows)
    assert (packed["length"].sum(axis=1) <= 24).all() and (packed["length"] > 1).all()
    model = make_model(cfg.model)
    params = model.init(jax.random.PRNGKey(0), {k: jnp.asarray(v) for k, v in packed.items()})["params"]
    prefix, _ = draw_prefix(jax.random.PRNGKey(3), jnp.asarray(packed["length"]), case["attention"], False)

    def errors(batch):
        out = model.apply(
            {"params": params}, {k: jnp.asarray(v) for k, v in batch.items()}, prefix_length=prefix
        )
        return np.asarray(per_patch_error(out["pred"], jnp.asarray(batch["patches"]), True))

    base = errors(packed)
    poked = {k: v.copy() for k, v in packed.items()}
    second = poked["segment_ids"] == 2
    poked["patches"][second] = 255 - poked["patches"][second]  # image 2 of every row
    poked["patches"][poked["segment_ids"] == 0] = 77  # and the padding
    after = errors(poked)
    others = (packed["segment_ids"] == 1) | (packed["segment_ids"] == 3)
    assert base[others].tobytes() == after[others].tobytes()
    assert not np.array_equal(base[second], after[second])  # the perturbed image itself changed


@pytest.mark.parametrize("case", CASES[:3])
def test_the_same_images_give_the_same_errors_packed_and_unpacked(case):
    cfg = tiny_config(**case)
    small = _small_images()
    rows = [[0, 1, 2], [3, 4, 5]]
    packed = _pack_rows(small, rows)
    model = make_model(cfg.model)
    params = model.init(jax.random.PRNGKey(0), {k: jnp.asarray(v) for k, v in packed.items()})["params"]
    prefix, _ = draw_prefix(jax.random.PRNGKey(3), jnp.asarray(packed["length"]), case["attention"], False)

    def errors(batch, prefix):
        out = model.apply(
            {"params": params}, {k: jnp.asarray(v) for k, v in batch.items()}, prefix_length=prefix
        )
        return np.asarray(per_patch_error(out["pred"], jnp.asarray(batch["patches"]), True))

    packed_err = errors(packed, prefix)
    single = {k: small[k] for k in ("patches", "coords", "grid", "length")}
    single_prefix = None if prefix is None else prefix.reshape(-1)
    single_err = errors(single, single_prefix)
    for r, members in enumerate(rows):
        for s, i in enumerate(members):
            np.testing.assert_allclose(
                packed_err[r][packed["segment_ids"][r] == s + 1],
                single_err[i, : small["length"][i]],
                atol=1e-6,
            )
