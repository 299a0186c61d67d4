"""Attentive probe: loading only the backbone, frozen backbone, padding invariance, caching, outputs."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from probe_helpers import ROOT, load_config, pretrain_workdir, tiny_probe_config

from naraim.data.pipeline import make_eval_iterator
from naraim.errors import UserError
from naraim.probe.loading import load_pretrained
from naraim.probe.runner import make_probe_optimizer, prepare, run_probe
from naraim.probe.step import init_params, init_state, make_train_step
from naraim.train.checkpoint import restore_params
from naraim.train.step import dummy_batch


@pytest.fixture(scope="module")
def workdir():
    return pretrain_workdir("naraim")


def _batch(cfg, n=8):
    it = make_eval_iterator(cfg.data, split=cfg.data.train_split, patch_size=8, global_batch_size=n)
    batch = next(iter(it))
    return {k: jnp.asarray(v) for k, v in batch.items() if k != "valid"}


def _same(a, b):
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)))


def test_loads_only_the_backbone_from_a_workdir_or_a_step_dir(workdir):
    params, cfg, step = load_pretrained(workdir)
    full, _, _ = restore_params(workdir)
    assert set(full) == {"backbone", "head"} and step == 2
    assert "head" not in params and "block_0" in params and "embed" in params
    assert _same(params, full["backbone"])
    params_step, _, step2 = load_pretrained(os.path.join(workdir, "checkpoints", "2"))
    assert step2 == 2 and _same(params, params_step)
    # the architecture comes from the pre-training run's config.json, not from the probe config
    resolved, clf, _, classes = prepare(tiny_probe_config(workdir))
    assert (
        resolved.model.variant == cfg.model.variant == "Pico/8" and clf.backbone.depth == 2 and classes == 10
    )


def test_a_checkpoint_that_does_not_fit_is_one_clear_line(workdir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(workdir, broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["model"]["posemb"] = "fractional"  # the checkpoint has no fractional position-embedding params
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="does not fit the backbone"):
        prepare(tiny_probe_config(str(broken)))
    cfg["model"]["posemb"] = "absolute_sincos_2d"
    cfg["model"]["variant"] = "Pico/16"  # patch 16: the patch-embedding kernel has another shape
    (broken / "config.json").write_text(json.dumps(cfg))
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "scripts", "probe.py"),
            "--config=" + os.path.join(ROOT, "configs", "probe.py"),
            f"--workdir={tmp_path / 'probe'}",
            f"--config.init_from={broken}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("WARNING:absl")]
    assert len(lines) == 1 and "does not fit the backbone" in lines[0] and "embed" in lines[0], proc.stderr


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("protocol", "knn", "protocol='knn'"),
        ("attention", "prefix_causal", "attention='prefix_causal'"),
        ("probe.block", 5, "probe.block=5 is outside"),
        ("probe.cache_features", "always", "is random"),
        ("batch_size", 0, "batch_size=0"),
        ("init_from", "", "init_from is not set"),
        ("init_from", "/nonexistent/run", "neither a pre-training workdir"),
    ],
)
def test_bad_probe_settings_are_user_errors(workdir, key, value, message):
    cfg = tiny_probe_config(workdir)
    section, _, name = key.rpartition(".")
    (cfg[section] if section else cfg)[name] = value
    with pytest.raises(UserError, match=message):
        prepare(cfg)


@pytest.mark.parametrize("variants", ["", "demo", "finetune", "linear", "demo,finetune", "demo,linear"])
def test_shipped_probe_variants_resolve_against_a_pretraining_run(workdir, variants):
    cfg = load_config("probe", variants)
    cfg.init_from = workdir
    resolved, clf, _, _ = prepare(cfg)
    assert resolved.protocol == ({"finetune", "linear"} & set(variants.split(",")) or {"attentive"}).pop()
    assert clf.frozen == (resolved.protocol != "finetune")
    assert resolved.data.max_tokens == 16  # inherited from the pre-training run


def test_unknown_variant_is_a_user_error():
    with pytest.raises(UserError, match="unknown config variant"):
        load_config("probe", "demo,bogus")


def _setup(workdir, variants="", **overrides):
    cfg = tiny_probe_config(workdir, variants)
    for key, value in overrides.items():
        cfg[key] = value
    cfg, clf, backbone, classes = prepare(cfg)
    backbone = jax.tree.map(jnp.asarray, backbone)
    params, stats = init_params(clf, backbone, dummy_batch(cfg, 1), 0)
    optimizer, schedule = make_probe_optimizer(cfg, clf, params)
    return cfg, clf, backbone, classes, init_state(params, stats, optimizer, 0), optimizer, schedule


def test_frozen_backbone_is_bit_identical_and_outside_the_optimizer(workdir):
    cfg, clf, backbone, classes, state, optimizer, schedule = _setup(workdir)
    before = jax.tree.map(np.array, backbone)
    head_before = jax.tree.map(np.array, state["params"]["head"])
    assert set(state["params"]) == {"head"}
    step = make_train_step(clf, optimizer, schedule, cfg, classes, cached=False)
    batch = _batch(cfg)
    for _ in range(3):
        state, metrics = step(state, backbone, batch)
    assert _same(backbone, before)
    assert not _same(state["params"]["head"], head_before)

    # no gradient reaches the backbone through the probe's features
    def loss(bp):
        return jnp.sum(clf.features(bp, batch))

    grads = jax.grad(loss)(backbone)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


def _pad(batch, extra, rng):
    """The same examples with `extra` more padding tokens, all padding filled with garbage."""
    n = batch["patches"].shape[1] + extra
    out = {}
    for key in ("patches", "coords"):
        x = np.asarray(batch[key])
        pad = [(0, 0), (0, extra), (0, 0)]
        x = np.pad(x, pad)
        garbage = rng.integers(0, 255 if key == "patches" else 4, x.shape).astype(x.dtype)
        real = np.arange(n)[None, :, None] < np.asarray(batch["length"])[:, None, None]
        out[key] = jnp.asarray(np.where(real, x, garbage))
    return {**batch, **out}


@pytest.mark.parametrize("variants", ["", "linear", "finetune"])
def test_padding_never_influences_logits(workdir, variants):
    cfg, clf, backbone, classes, state, _, _ = _setup(workdir, variants)
    head_vars = {"params": state["params"]["head"]}
    if state["batch_stats"]:
        head_vars["batch_stats"] = state["batch_stats"]
    batch = _batch(cfg)
    assert int(batch["length"].min()) < batch["patches"].shape[1]  # some examples are padded

    def logits(b, train):
        return clf.logits(head_vars, clf.features(backbone, b), b["length"], train)[0]

    rng = np.random.default_rng(0)
    for train in (False, True):
        ref = logits(batch, train)
        for extra in (0, 5):
            np.testing.assert_allclose(logits(_pad(batch, extra, rng), train), ref, rtol=1e-5, atol=1e-5)


def test_cached_step_equals_uncached_step(workdir):
    cfg, clf, backbone, classes, state, optimizer, schedule = _setup(workdir)
    batch = _batch(cfg)
    uncached = make_train_step(clf, optimizer, schedule, cfg, classes, cached=False)
    cached = make_train_step(clf, optimizer, schedule, cfg, classes, cached=True)
    features = {"features": clf.features(backbone, batch), "length": batch["length"], "label": batch["label"]}
    s1 = jax.tree.map(jnp.copy, state)
    s1, m1 = uncached(s1, backbone, batch)
    s2, m2 = cached(state, backbone, features)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s2["params"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _metrics(path):
    return [json.loads(line) for line in open(os.path.join(path, "metrics.jsonl"))]


def test_cached_run_matches_uncached_run_and_writes_outputs(workdir, tmp_path):
    """With deterministic transforms and one batch = the whole training set (48 images) every step sees the
    same examples, cached or not, so both runs must end with the same losses and predictions."""
    runs = {}
    for mode in ("always", "never"):
        cfg = tiny_probe_config(workdir)
        cfg.train_transforms = "eval"
        cfg.batch_size = 48
        cfg.total_steps = 4
        cfg.log_every = 1
        cfg.probe.cache_features = mode
        runs[mode] = run_probe(cfg, str(tmp_path / mode))
    cached, uncached = _metrics(tmp_path / "always"), _metrics(tmp_path / "never")
    assert cached[0]["cache_examples"] == 48 and "cache_examples" not in uncached[0]
    losses = lambda ms: [m["loss"] for m in ms if m["split"] == "train" and "loss" in m]  # noqa: E731
    np.testing.assert_allclose(losses(cached), losses(uncached), rtol=1e-4)
    assert runs["always"] == runs["never"]
    res = json.loads((tmp_path / "always" / "results.json").read_text())
    assert res["num_examples"] == 24 and sum(b["count"] for b in res["per_aspect_ratio_bin"]) == 24
    assert res["per_aspect_ratio_bin"][-1]["bin"] == [2.0, None]
    assert (tmp_path / "always" / "accuracy_by_aspect_ratio.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "always" / "config.json").read_text())
    assert saved["model"]["variant"] == "Pico/8" and saved["protocol"] == "attentive"
    assert cached[-1]["split"] == "val" and cached[-1]["top1"] == res["top1"]
