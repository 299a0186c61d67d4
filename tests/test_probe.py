"""Attentive probe: loading only the backbone, frozen backbone, padding invariance, caching, outputs."""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from probe_helpers import ROOT, load_config, pretrain_workdir, tiny_probe_config
from script_runner import run_script

from naraim.data.pipeline import make_eval_iterator
from naraim.data.sources import open_source
from naraim.errors import UserError
from naraim.infra.checkpoint import restore_params
from naraim.model.model import dummy_batch
from naraim.probe import protocols
from naraim.probe.classifiers import apply_head, make_classifier
from naraim.probe.knn import knn_correct, normalise
from naraim.probe.protocols import make_sweep, split_minival, sweep_optimizer
from naraim.probe.runner import load_pretrained, prepare, run_probe
from naraim.probe.step import init_state, make_train_step


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
    resolved, backbone, _, classes = prepare(tiny_probe_config(workdir))
    assert resolved.model.variant == cfg.model.variant == "Pico/8" and backbone.depth == 2 and classes == 10


def test_a_checkpoint_that_does_not_fit_is_one_clear_line(workdir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(workdir, broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["model"]["posemb"] = "fractional"  # the checkpoint has no fractional position-embedding params
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="does not fit the backbone"):
        prepare(tiny_probe_config(str(broken)))


@pytest.mark.slow
def test_the_probe_script_says_a_checkpoint_does_not_fit_in_one_line(workdir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(workdir, broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["model"]["variant"] = "Pico/16"  # patch 16: the patch-embedding kernel has another shape
    (broken / "config.json").write_text(json.dumps(cfg))
    proc = run_script(
        "scripts/probe.py",
        "--config=" + os.path.join(ROOT, "configs", "probe.py"),
        f"--workdir={tmp_path / 'probe'}",
        f"--config.init_from={broken}",
        timeout=300,
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("WARNING:absl")]
    assert len(lines) == 1 and "does not fit the backbone" in lines[0] and "embed" in lines[0], proc.stderr


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("protocol", "bogus", "protocol='bogus'"),
        ("attention", "prefix_causal", "attention='prefix_causal'"),
        ("probe.blocks", "5", "block 5 is outside"),
        ("probe.blocks", "all", "set probe.minival_fraction"),
        ("probe.head", "mlp", "probe.head='mlp'"),
        ("optim.decay", "some", "optim.decay='some'"),
        ("probe.cache_features", "always", "is random"),
        ("batch_size", 0, "batch_size=0"),
        ("init_from", "", "init_from is not set"),
        ("init_from", "/nonexistent/run", "/nonexistent/run does not exist"),
        ("init_from", "/tmp", "neither a pre-training workdir"),
    ],
)
def test_bad_probe_settings_are_user_errors(workdir, key, value, message):
    cfg = tiny_probe_config(workdir)
    section, _, name = key.rpartition(".")
    (cfg[section] if section else cfg)[name] = value
    with pytest.raises(UserError, match=message):
        prepare(cfg)


VARIANTS = ["", "demo", "finetune", "linear", "demo,finetune", "demo,linear", "naraim", "sweep", "knn"]


@pytest.mark.parametrize("variants", VARIANTS + ["darl_linear", "darl_finetune", "sweep,linear"])
def test_shipped_probe_variants_resolve_against_a_pretraining_run(workdir, variants):
    cfg = load_config("probe", variants)
    cfg.init_from = workdir
    resolved, _, _, _ = prepare(cfg)
    names = set(variants.split(","))
    protocols = {"finetune": "finetune", "darl_finetune": "finetune", "linear": "linear"}
    protocols.update(darl_linear="linear", knn="knn")
    assert resolved.protocol == next((protocols[n] for n in names if n in protocols), "attentive")
    assert resolved.data.max_tokens == 16  # inherited from the pre-training run


def test_naraim_and_darl_probe_variants_follow_the_papers(workdir):
    """naraim: the reference's head on the last block, b2 0.98, batch 512, decay on every parameter;
    darl_linear: causal attention (DARL Appendix B), LARS; darl_finetune: RandAugment, mixup, CutMix."""
    cfg = load_config("probe", "naraim")
    assert (cfg.probe.head, cfg.probe.blocks, cfg.optim.b2, cfg.batch_size) == ("naraim_ref", "-1", 0.98, 512)
    assert (cfg.total_steps, cfg.optim.warmup_steps, cfg.optim.schedule, cfg.optim.decay) == (
        50_000,
        500,
        "cosine",
        "all",
    )
    cfg.init_from = workdir
    resolved, backbone, _, classes = prepare(cfg)
    sw = make_sweep(resolved, backbone, classes)
    assert sw.specs == (backbone.depth - 1,) and type(sw.head).__name__ == "ReferenceProbeHead"
    linear = load_config("probe", "darl_linear")
    assert (linear.protocol, linear.attention, linear.optim.optimizer) == ("linear", "causal", "lars")
    linear.init_from = workdir
    resolved, backbone, _, classes = prepare(linear)
    assert make_sweep(resolved, backbone, classes).attention == "causal"  # the backbone runs causally
    ft = load_config("probe", "darl_finetune")
    assert (ft.protocol, ft.attention, ft.finetune.mixup_alpha, ft.finetune.cutmix_alpha) == (
        "finetune",
        "bidirectional",
        0.8,
        1.0,
    )
    assert "rand_augment" in ft.data.transforms
    # Table 8: batch 4096, 5 warm-up epochs, ViT-L for 50 epochs (no drop path) or 90 (drop path 0.1)
    steps_per_epoch = 1_281_167 / 4096
    assert (ft.batch_size, ft.optim.lr, ft.model.drop_path) == (4096, 1e-3, 0.0)
    assert ft.total_steps == int(50 * steps_per_epoch) and ft.optim.warmup_steps == int(5 * steps_per_epoch)
    long = load_config("probe", "darl_finetune_long")
    assert long.total_steps == int(90 * steps_per_epoch) and long.model.drop_path == 0.1
    assert long.protocol == "finetune" and long.finetune.mixup_alpha == 0.8


def test_unknown_variant_is_a_user_error():
    with pytest.raises(UserError, match="unknown config variant"):
        load_config("probe", "demo,bogus")


def _sweep_step(sw, optimizer, schedule, cached):
    """The probe's train step for a sweep with a unit-lr optimizer (each head's lr scales its updates)."""
    return make_train_step(sw, optimizer, schedule, sw.head.num_classes, lrs=sw.lrs, cached=cached)


def _setup(workdir, variants="", **overrides):
    """(cfg, sweep, backbone params, state, optimizer, schedule) of a frozen probe, unit-lr optimizer."""
    cfg = tiny_probe_config(workdir, variants)
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (cfg[section] if section else cfg)[name] = value
    cfg, backbone, backbone_np, classes = prepare(cfg)
    sw = make_sweep(cfg, backbone, classes)
    bp = jax.tree.map(jnp.asarray, backbone_np)
    params, stats = sw.init(bp, dummy_batch(cfg, 1), cfg.seed)
    optimizer, schedule = sweep_optimizer(cfg, sw)
    return cfg, sw, bp, init_state(params, stats, optimizer, cfg.seed, sw.heads), optimizer, schedule


@pytest.mark.slow
def test_frozen_backbone_is_bit_identical_and_outside_the_optimizer(workdir):
    cfg, sw, backbone, state, optimizer, schedule = _setup(workdir)
    before = jax.tree.map(np.array, backbone)
    head_before = jax.tree.map(np.array, state["params"])
    step = _sweep_step(sw, optimizer, schedule, cached=False)
    batch = _batch(cfg)
    for _ in range(3):
        state, metrics = step(state, backbone, batch)
    assert _same(backbone, before)
    assert not _same(state["params"], head_before)

    # no gradient reaches the backbone through the probe's features
    grads = jax.grad(lambda bp: jnp.sum(sw.block_stack(bp, batch)))(backbone)
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


@pytest.mark.slow
@pytest.mark.parametrize("variants", ["", "linear", "naraim", "finetune"])
def test_padding_never_influences_logits(workdir, variants):
    batch = None
    if variants == "finetune":
        cfg, backbone, backbone_np, classes = prepare(tiny_probe_config(workdir, variants))
        clf = make_classifier(cfg, backbone, classes)
        params, stats = clf.init(backbone_np, dummy_batch(cfg, 1), 0)
        head_vars = {"params": params["head"], **({"batch_stats": stats} if stats else {})}

        def logits(b, train):
            return apply_head(clf.head, head_vars, clf.features(params["backbone"], b), b["length"], train)[0]

    else:
        cfg, sw, backbone, state, _, _ = _setup(workdir, variants)
        head_vars = {
            "params": state["params"],
            **({"batch_stats": state["batch_stats"]} if state["batch_stats"] else {}),
        }

        def logits(b, train):
            return sw.apply(
                head_vars["params"],
                head_vars.get("batch_stats", {}),
                sw.features(sw.block_stack(backbone, b)),
                b["length"],
                None,
                train,
            )[0]

    batch = _batch(cfg)
    assert int(batch["length"].min()) < batch["patches"].shape[1]  # some examples are padded
    rng = np.random.default_rng(0)
    for train in (False, True):
        ref = logits(batch, train)
        for extra in (0, 5):
            np.testing.assert_allclose(logits(_pad(batch, extra, rng), train), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("variants", ["", "linear"])
def test_cached_step_equals_uncached_step(workdir, variants):
    cfg, sw, backbone, state, optimizer, schedule = _setup(workdir, variants)
    batch = _batch(cfg)
    uncached = _sweep_step(sw, optimizer, schedule, cached=False)
    cached = _sweep_step(sw, optimizer, schedule, cached=True)
    features = {
        "features": sw.block_stack(backbone, batch),
        "length": batch["length"],
        "label": batch["label"],
    }
    s1 = jax.tree.map(jnp.copy, state)
    s1, m1 = uncached(s1, backbone, batch)
    s2, m2 = cached(state, backbone, features)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s2["params"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_linear_probe_caches_pooled_features_and_reads_the_mean_of_the_real_tokens(workdir):
    """The linear sweep's stack is [B, nb, D], the mean over real tokens of the tokens' stack [B, nb, N, D];
    its logits are BatchNorm + Dense on that mean (the mean of the last blocks included)."""
    cfg, sw, backbone, state, _, _ = _setup(
        workdir, "linear", **{"probe.blocks": "all,mean", "probe.minival_fraction": 0.1}
    )
    tokens_sw = dataclasses.replace(sw, pooled=False)
    batch = _batch(cfg)
    tokens = np.asarray(tokens_sw.block_stack(backbone, batch))  # [B, nb, N, D]
    pooled = np.asarray(sw.block_stack(backbone, batch))
    real = np.arange(tokens.shape[2])[None, :] < np.asarray(batch["length"])[:, None]
    expected = (tokens * real[:, None, :, None]).sum(2) / real.sum(1)[:, None, None]
    assert pooled.shape == tokens.shape[:2] + tokens.shape[3:]
    np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-6)

    feats = np.asarray(tokens_sw.features(tokens))  # [F, B, N, D]
    means = (feats * real[None, :, :, None]).sum(2) / real.sum(1)[None, :, None]  # [F, B, D]
    head_vars = {"params": state["params"], "batch_stats": state["batch_stats"]}
    logits, _ = sw.apply(
        head_vars["params"],
        head_vars.get("batch_stats", {}),
        sw.features(pooled),
        batch["length"],
        None,
        False,
    )
    kernel, bias = state["params"]["classifier"]["kernel"], state["params"]["classifier"]["bias"]
    stats = state["batch_stats"]["bn"]
    normed = (means[:, None] - stats["mean"][:, :, None]) / np.sqrt(stats["var"][:, :, None] + 1e-6)
    expected_logits = np.einsum("flbd,fldc->flbc", normed, kernel) + bias[:, :, None]
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("variants", ["", "linear"])
def test_a_sweeps_heads_never_interact_not_even_through_clipping(workdir, variants):
    """Two heads (blocks 0 and 1, two learning rates) against one (block 0, the first rate), with clipping
    active at every step: the shared head's parameters, BatchNorm statistics and optimizer state stay
    those of the single-head run."""
    clip = {"optim.clip_norm": 1e-3, "probe.minival_fraction": 0.1}
    _, two, bp, state2, opt, sched = _setup(
        workdir, variants, **{"probe.blocks": "0,1", "probe.lrs": (1e-2, 1.0), **clip}
    )
    cfg, one, _, state1, _, _ = _setup(
        workdir, variants, **{"probe.blocks": "0", "probe.lrs": (1e-2,), **clip}
    )
    step2 = _sweep_step(two, opt, sched, cached=False)
    step1 = _sweep_step(one, opt, sched, cached=False)
    batch = _batch(cfg)
    for _ in range(3):
        state2, m2 = step2(state2, bp, batch)
        state1, m1 = step1(state1, bp, batch)
    assert float(m2["grad_norm"][1, 0]) > 1e-3 and float(m2["grad_norm"][0, 0]) > 1e-3  # both clipped
    for key in ("params", "batch_stats", "opt_state"):
        shared = jax.tree.map(lambda x: x[:1, :1] if x.ndim >= 2 else x, state2[key])
        for (path, a), b in zip(
            jax.tree_util.tree_leaves_with_path(shared), jax.tree.leaves(state1[key]), strict=True
        ):
            # rtol 1e-5: a vmapped pair of heads reduces in another order than one head on some CPUs (7e-6
            # seen on AVX-512); clipping by a norm over both heads would move them by far more
            np.testing.assert_allclose(
                a, b, rtol=1e-5, atol=1e-6, err_msg=f"{key}{jax.tree_util.keystr(path)}"
            )


@pytest.mark.slow
def test_sweep_heads_equal_separate_single_head_runs(workdir, tmp_path):
    """Every (block, lr) head of one sweep ends where a single-head run with those features and that lr
    ends (same seed, cached features): one forward feeds heads that never interact."""
    runs = {}
    sweep_cfg = tiny_probe_config(workdir)
    sweep_cfg.update({"train_transforms": "eval"})
    sweep_cfg.probe.update(cache_features="always", minival_fraction=0.2, blocks="all,mean", lrs=(1e-3, 1e-2))
    runs["sweep"] = run_probe(sweep_cfg, str(tmp_path / "sweep"))
    for blocks, lr in (("0", 1e-3), ("1", 1e-2), ("mean", 1e-2)):
        cfg = tiny_probe_config(workdir)
        cfg.update({"train_transforms": "eval"})
        cfg.probe.update(cache_features="always", minival_fraction=0.2, blocks=blocks, lrs=(lr,))
        runs[(blocks, lr)] = run_probe(cfg, str(tmp_path / f"{blocks}_{lr}"))
    heads = {(str(h["features"]), h["lr"]): h for h in runs["sweep"]["per_head"]}
    assert len(heads) == 6
    singles = {k: v for k, v in runs.items() if k != "sweep"}
    for (blocks, lr), single in singles.items():
        name = "mean_last_2" if blocks == "mean" else blocks
        head = heads[(name, lr)]
        assert head["minival_top1"] == single["per_head"][0]["minival_top1"]
        assert head["top1"] == single["top1"] and head["top5"] == single["top5"]
        assert head["per_aspect_ratio_bin"] == single["per_aspect_ratio_bin"]
    # the reported head is the best on minival, and the report is its validation accuracy
    best = max(runs["sweep"]["per_head"], key=lambda h: h["minival_top1"])
    assert runs["sweep"]["selected"] == {"features": best["features"], "lr": best["lr"]}
    assert runs["sweep"]["top1"] == best["top1"]
    assert (tmp_path / "sweep" / "accuracy_by_block.png").read_bytes()[:4] == b"\x89PNG"


def test_minival_is_seeded_and_disjoint_from_training_and_validation(workdir):
    train, minival = split_minival(100, 0.1, seed=3)
    assert len(minival) == 10 and len(train) == 90 and not set(train) & set(minival)
    assert set(train) | set(minival) == set(range(100))
    np.testing.assert_array_equal(split_minival(100, 0.1, seed=3)[1], minival)
    assert not np.array_equal(split_minival(100, 0.1, seed=4)[1], minival)
    assert len(split_minival(100, 0.0, seed=3)[1]) == 0
    # minival examples come from the training split: none of them is a validation image
    cfg, _, _, _ = prepare(tiny_probe_config(workdir))
    train_idx, minival_idx = split_minival(48, 0.25, cfg.seed)
    it = make_eval_iterator(cfg.data, split="train", patch_size=8, global_batch_size=8, indices=minival_idx)
    mini = np.concatenate([b["patches"][b["valid"]] for b in it])
    val = np.concatenate(
        [
            b["patches"][b["valid"]]
            for b in make_eval_iterator(cfg.data, split="validation", patch_size=8, global_batch_size=8)
        ]
    )
    assert len(mini) == 12
    assert not {m.tobytes() for m in mini} & {v.tobytes() for v in val}


def test_knn_is_perfect_on_separable_features_and_chance_on_shuffled_labels():
    rng = np.random.default_rng(0)
    classes, per_class, dim = 10, 40, 32
    centres = normalise(jnp.asarray(rng.normal(size=(classes, dim)), jnp.float32))
    labels = np.repeat(np.arange(classes), per_class)
    feats = np.asarray(normalise(centres[labels] + 0.05 * rng.normal(size=(len(labels), dim))))
    bank, queries = feats[::2], feats[1::2]
    top1, top5 = knn_correct(bank, labels[::2], queries, labels[1::2], classes, k=20, temperature=0.07)
    assert top1.mean() == 1.0 and top5.mean() == 1.0
    # the same features with shuffled labels carry nothing: about chance (0.1)
    shuffled = rng.permutation(labels)
    top1, _ = knn_correct(bank, shuffled[::2], queries, shuffled[1::2], classes, k=20, temperature=0.07)
    assert 0.04 < top1.mean() < 0.2
    noise = np.asarray(normalise(jnp.asarray(rng.normal(size=(2000, dim)), jnp.float32)))
    noise_labels = rng.integers(0, classes, 2000)
    top1, _ = knn_correct(noise[:1000], noise_labels[:1000], noise[1000:], noise_labels[1000:], classes)
    assert 0.05 < top1.mean() < 0.16


def test_knn_votes_with_exp_similarity_over_temperature_among_the_k_nearest():
    """One query against a bank whose classes win under different k and temperatures: the nearest image is
    class 0 (similarity 0.9), two class-1 images follow (0.6, 0.55), then three of class 2 (0.3, 0.29, 0.28)
    and one of class 3 (-0.5). Scores are sums of exp(similarity / T) over the k most similar images."""
    sims = np.array([0.9, 0.6, 0.55, 0.3, 0.29, 0.28, -0.5])
    bank = np.stack([sims, np.sqrt(1 - sims**2)], 1).astype(np.float32)
    labels = np.array([0, 1, 1, 2, 2, 2, 3])
    query = np.array([[1.0, 0.0]], np.float32)
    cases = [
        (1, 10.0, 0),  # only the nearest votes
        (2, 10.0, 0),  # e^0.09 > e^0.06
        (3, 10.0, 1),  # nearly equal weights: two class-1 votes beat one class-0 vote
        (5, 10.0, 1),  # two class-1 votes beat two class-2 votes
        (6, 10.0, 2),  # three class-2 votes
        (3, 1.0, 1),  # e^0.9 = 2.46 < e^0.6 + e^0.55 = 3.55
        (3, 0.3, 0),  # e^3 = 20.1 > e^2 + e^1.83 = 13.6: the temperature sharpens the nearest vote
        (7, 0.07, 0),
        (100, 10.0, 2),  # k beyond the bank: all 7 vote
    ]
    for k, temperature, winner in cases:
        for label in range(4):
            top1, _ = knn_correct(bank, labels, query, np.array([label]), 4, k=k, temperature=temperature)
            assert bool(top1[0]) == (label == winner), (k, temperature, label)


@pytest.mark.slow
def test_knn_probe_writes_per_block_results(workdir, tmp_path):
    cfg = tiny_probe_config(workdir, "knn")
    results = run_probe(cfg, str(tmp_path))
    # the bank holds 43 images (48 less the minival split): k = 100 and 200 run as 43
    heads = [(h["features"], h["k"]) for h in results["per_head"]]
    assert heads == [(f, k) for f in (0, 1, "mean_last_2") for k in (10, 20, 43)]
    assert all(h["minival_top1"] is not None for h in results["per_head"])
    assert results["num_examples"] == 24 and set(results["selected"]) == {"features", "k"}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["per_head"][0]["per_aspect_ratio_bin"][-1]["bin"] == [2.0, None]


def _metrics(path):
    return [json.loads(line) for line in open(os.path.join(path, "metrics.jsonl"))]


@pytest.mark.slow
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


def _labels(cfg, split, indices):
    source = open_source(prepare(cfg)[0].data, split)
    return [source[int(i)][1] for i in indices]


@pytest.mark.slow
@pytest.mark.parametrize("cached", [True, False])
def test_heads_train_on_the_training_indices_and_are_selected_on_minival_only(
    workdir, tmp_path, monkeypatch, cached
):
    """The heads' batches (or feature cache) hold the training indices, never a minival image; each head's
    minival_top1 is its accuracy on exactly the minival images; the report is on the validation split."""
    cfg = tiny_probe_config(workdir)
    cfg.probe.update(blocks="all", minival_fraction=0.25, cache_features="always" if cached else "never")
    if cached:
        cfg.train_transforms = "eval"
    calls, trained_on, accumulated = [], [], []
    real_eval_batches, real_accumulate = protocols.RunContext.eval_batches, protocols._accumulate
    real_train_iterator = protocols.make_train_iterator

    def eval_batches(self, split, indices=None, max_examples=None, data_cfg=None):
        calls.append((split, None if indices is None else list(indices)))
        return real_eval_batches(self, split, indices, max_examples, data_cfg)

    def train_iterator(*args, **kwargs):
        trained_on.append(list(kwargs["indices"]))
        return real_train_iterator(*args, **kwargs)

    def accumulate(eval_fn, batches, mesh):
        batches = list(batches)
        top1, top5, ar = real_accumulate(eval_fn, batches, mesh)
        labels = np.concatenate([b["label"][b["valid"]] for b in batches])
        accumulated.append((sorted(labels.tolist()), top1))
        return top1, top5, ar

    monkeypatch.setattr(protocols.RunContext, "eval_batches", eval_batches)
    monkeypatch.setattr(protocols, "make_train_iterator", train_iterator)
    monkeypatch.setattr(protocols, "_accumulate", accumulate)
    results = run_probe(cfg, str(tmp_path))
    train_idx, minival_idx = split_minival(48, 0.25, cfg.seed)
    assert len(minival_idx) == 12 and not set(train_idx) & set(minival_idx)
    if cached:
        assert calls[:2] == [("train", list(train_idx)), ("train", list(minival_idx))]
        assert _metrics(tmp_path)[0]["cache_examples"] == len(train_idx) == 36
    else:
        assert trained_on == [list(train_idx)] and ("train", list(minival_idx)) in calls
    assert ("validation", None) in calls and all(split != "validation" or idx is None for split, idx in calls)
    minival_labels = sorted(_labels(cfg, "train", minival_idx))
    (top1,) = [t for labels, t in accumulated if labels == minival_labels]
    assert top1.shape == (12, 2, 1)
    assert [h["minival_top1"] for h in results["per_head"]] == pytest.approx(
        top1.mean(axis=0).ravel().tolist()
    )
    assert results["num_examples"] == 24  # the validation split


@pytest.mark.slow
def test_the_knn_bank_holds_the_training_indices_and_minival_queries_only_minival(
    workdir, tmp_path, monkeypatch
):
    cfg = tiny_probe_config(workdir, "knn")
    cfg.probe.update(minival_fraction=0.25)
    queried = []
    real = protocols.knn.knn_correct_at

    def knn_correct_at(bank, bank_labels, queries, query_labels, *args):
        top1, top5 = real(bank, bank_labels, queries, query_labels, *args)
        queried.append((sorted(bank_labels.tolist()), sorted(query_labels.tolist()), top1))
        return top1, top5

    monkeypatch.setattr(protocols.knn, "knn_correct_at", knn_correct_at)
    results = run_probe(cfg, str(tmp_path))
    train_idx, minival_idx = split_minival(48, 0.25, cfg.seed)
    bank_labels = sorted(_labels(cfg, "train", train_idx))
    assert all(bank == bank_labels for bank, _, _ in queried)  # every query searched the training bank
    assert _metrics(tmp_path)[-2]["bank_examples"] == len(train_idx) == 36
    # one query per block, top1 [Q, K]; per_head runs block-major over k
    minival = [t for _, q, t in queried if q == sorted(_labels(cfg, "train", minival_idx))]
    assert len(minival) == 3 and len(results["per_head"]) == 3 * minival[0].shape[1]
    by_head = [x for t in minival for x in t.mean(axis=0)]
    assert [h["minival_top1"] for h in results["per_head"]] == pytest.approx(by_head)
    validation = [t for _, q, t in queried if len(q) == 24]
    assert [h["top1"] for h in results["per_head"]] == pytest.approx(
        [x for t in validation for x in t.mean(0)]
    )
