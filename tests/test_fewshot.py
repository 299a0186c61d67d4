"""Representation quality during pre-training (naraim/train/fewshot.py), kNN at several k and the sweep's
weight-decay axis (naraim/probe)."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image
from probe_helpers import load_config, pretrain_workdir, tiny_probe_config

from naraim.data.pipeline import make_eval_iterator
from naraim.data.sources import open_source
from naraim.errors import UserError
from naraim.infra.checkpoint import restore_params
from naraim.infra.mesh import make_mesh
from naraim.model.model import dummy_batch
from naraim.probe.knn import knn_correct, knn_correct_at, normalise
from naraim.probe.protocols import make_sweep, sweep_optimizer
from naraim.probe.runner import prepare, run_probe
from naraim.probe.step import init_state, make_train_step
from naraim.train.fewshot import BIAS_FEATURE, FewShot, draw_shots, fit_ridge
from naraim.train.trainer import train


def test_the_ridge_solution_is_numpys_least_squares():
    """W minimises |A W - T|^2 + l2 |W|^2: numpy's lstsq of [A; sqrt(l2) I] W = [T; 0], in both forms (more
    examples than features, and fewer)."""
    rng = np.random.default_rng(0)
    for n, d in ((40, 5), (6, 20)):
        x, y = rng.normal(size=(n, d)), rng.integers(0, 3, n)
        ridge = fit_ridge(x, y, 3, 2.5)
        a = ridge.design(x)
        assert np.allclose(a[:, -1], BIAS_FEATURE)
        targets = 2.0 * np.eye(3)[y] - 1.0
        stacked = np.concatenate([a, np.sqrt(2.5) * np.eye(a.shape[1])])
        expected = np.linalg.lstsq(stacked, np.concatenate([targets, np.zeros((a.shape[1], 3))]), rcond=None)
        np.testing.assert_allclose(ridge.weights, expected[0], rtol=1e-8, atol=1e-10)


def test_fewshot_accuracy_is_perfect_on_separable_features_and_chance_on_shuffled_labels():
    rng = np.random.default_rng(0)
    classes, dim = 10, 64
    centers = rng.normal(size=(classes, dim))
    y = np.repeat(np.arange(classes), 10)
    x = centers[y] + 0.3 * rng.normal(size=(len(y), dim))
    y_test = rng.integers(0, classes, 2_000)
    x_test = centers[y_test] + 0.3 * rng.normal(size=(2_000, dim))
    assert np.mean(fit_ridge(x, y, classes, 1024.0).predict(x_test) == y_test) == 1.0
    shuffled = fit_ridge(x, rng.permutation(y), classes, 1024.0)
    assert abs(np.mean(shuffled.predict(x_test) == y_test) - 1 / classes) < 0.05


def test_shots_are_class_balanced_seeded_and_read_only_what_they_need():
    labels = np.random.default_rng(1).integers(0, 4, 1_000)
    reads = []
    shots = draw_shots(lambda i: reads.append(i) or int(labels[i]), 1_000, 4, 5, seed=3, max_reads=10**6)
    assert np.bincount(labels[shots], minlength=4).tolist() == [5, 5, 5, 5]
    assert len(reads) < 100  # stops once every class has its shots
    assert np.array_equal(shots, draw_shots(lambda i: labels[i], 1_000, 4, 5, seed=3, max_reads=10**6))
    assert not np.array_equal(shots, draw_shots(lambda i: labels[i], 1_000, 4, 5, seed=4, max_reads=10**6))
    unlabelled = draw_shots(lambda i: -1 if i % 2 else int(labels[i]), 1_000, 4, 5, seed=3, max_reads=10**6)
    assert all(i % 2 == 0 for i in unlabelled)


def _tiny_pretrain_config(**eval_fewshot):
    cfg = load_config("demo", "naraim")
    cfg.update(total_steps=4, batch_size=8, log_every=2, checkpoint_every=2, eval_every=2, progress_bar=False)
    cfg.model.variant = "Pico/8"
    cfg.data.update(image_size=32, max_tokens=16)
    cfg.data.synthetic.update(train_size=200, validation_size=40)
    cfg.eval.update(num_examples=16, batch_size=8, num_images=0)
    cfg.eval.fewshot.update(shots=3, num_eval_examples=30, **eval_fewshot)
    cfg.optim.update(warmup_steps=1, cooldown_steps=1)
    return cfg


def test_shots_are_the_same_on_every_start_and_disjoint_from_the_evaluation_images():
    """By default the images classified are other training images (best.json then selects on training
    data); a split name takes that split's first images instead."""
    cfg = _tiny_pretrain_config(blocks="0,-1")
    one, two = FewShot(cfg, make_mesh()), FewShot(cfg, make_mesh())
    assert np.array_equal(one.shot_indices, two.shot_indices) and len(one.shot_indices) == 3 * 10
    assert np.array_equal(one.test_indices, two.test_indices) and len(one.test_indices) == 30
    assert not set(one.shot_indices.tolist()) & set(one.test_indices.tolist())
    train = open_source(cfg.data, cfg.data.train_split)
    assert np.bincount([train[int(i)][1] for i in one.shot_indices]).tolist() == [3] * 10
    cfg.eval.fewshot.split = "validation"
    val = open_source(cfg.data, cfg.data.val_split)
    assert FewShot(cfg, make_mesh()).test_indices is None
    assert not {train[int(i)][2] for i in one.shot_indices} & {val[i][2] for i in range(30)}


def test_a_folder_without_classes_skips_it_with_one_line(tmp_path):
    (tmp_path / "only").mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(tmp_path / "only" / f"{i}.png")
    cfg = _tiny_pretrain_config()
    cfg.data.source = f"folder:{tmp_path}"
    cfg.data.holdout_fraction = 0.5
    fewshot = FewShot(cfg, make_mesh())
    assert "no class labels" in fewshot.skip and "\n" not in fewshot.skip and fewshot.run({}) == {}


@pytest.mark.slow
def test_pretraining_logs_fewshot_and_knn_and_keeps_the_best_parameters(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train(_tiny_pretrain_config(blocks="-1,0"), "run")  # a relative workdir, as the README's commands use
    workdir = str(tmp_path / "run")
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    val = [r for r in rows if r["split"] == "val"]
    assert [r["step"] for r in val] == [2, 4]
    for row in val:
        for key in (
            "fewshot_top1",
            "knn_top1",
            "fewshot_top1/block_0",
            "knn_top1/block_0",
            "knn_top1/block_1",
        ):
            assert 0.0 <= row[key] <= 1.0, key
        assert row["fewshot_top1"] == row["fewshot_top1/block_1"]
    assert os.path.exists(os.path.join(workdir, "curves.png"))
    best = json.load(open(os.path.join(workdir, "best.json")))
    best_row = max(val, key=lambda r: (r["fewshot_top1"], -r["step"]))
    assert best == {"step": best_row["step"], "metric": "fewshot_top1", "value": best_row["fewshot_top1"]}
    params, _, step = restore_params(workdir + ":best")
    saved, _, _ = restore_params(os.path.join(workdir, "checkpoints", str(best["step"])))
    assert step == best["step"]
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(saved), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(UserError, match="no best checkpoint"):
        restore_params(pretrain_workdir() + ":best")  # trained without evaluation


def test_knn_at_several_k_equals_separate_runs():
    rng = np.random.default_rng(0)
    bank, queries = normalise(rng.normal(size=(300, 16))), normalise(rng.normal(size=(50, 16)))
    labels, query_labels = rng.integers(0, 5, 300), rng.integers(0, 5, 50)
    ks = (1, 10, 20, 100, 400)
    top1, top5 = knn_correct_at(np.asarray(bank), labels, np.asarray(queries), query_labels, 5, ks)
    assert top1.shape == (50, 5)
    for j, k in enumerate(ks):
        one1, one5 = knn_correct(np.asarray(bank), labels, np.asarray(queries), query_labels, 5, k)
        np.testing.assert_array_equal(top1[:, j], one1)
        np.testing.assert_array_equal(top5[:, j], one5)


@pytest.mark.slow
def test_knn_probe_reports_every_block_and_k_and_selects_on_minival(tmp_path):
    cfg = tiny_probe_config(pretrain_workdir(), "knn")
    cfg.probe.knn_k = (1, 5, 200)
    results = run_probe(cfg, str(tmp_path / "knn"))
    heads = {(h["features"], h["k"]) for h in results["per_head"]}
    assert heads == {(f, k) for f in (0, 1, "mean_last_2") for k in (1, 5, 43)}  # 200 > the bank: 43
    best = max(results["per_head"], key=lambda h: h["minival_top1"])
    assert (results["selected"]["features"], results["selected"]["k"]) == (best["features"], best["k"])


@pytest.mark.slow
@pytest.mark.parametrize("variants", ["", "linear"])
def test_the_weight_decay_axis_gives_the_heads_of_separate_runs(variants):
    """Heads (lr, wd) of one sweep with probe.weight_decays against single-head runs with that optimizer
    weight decay: the same parameters after 3 steps (the decay is added in another order: to 1e-5)."""
    results = {}
    for wds, decay in (((0.0, 0.5), None), ((), 0.0), ((), 0.5)):
        cfg = tiny_probe_config(pretrain_workdir(), variants)
        cfg.probe.update(blocks="0", lrs=(1e-2,), weight_decays=wds, minival_fraction=0.1)
        if decay is not None:
            cfg.optim.weight_decay = decay
        cfg, backbone, backbone_np, classes = prepare(cfg)
        sw = make_sweep(cfg, backbone, classes)
        bp = jax.tree.map(np.asarray, backbone_np)
        params, stats = sw.init(bp, dummy_batch(cfg, 1), cfg.seed)
        optimizer, schedule = sweep_optimizer(cfg, sw)
        state = init_state(params, stats, optimizer, cfg.seed, sw.heads)
        step = make_train_step(
            sw, optimizer, schedule, classes, lrs=sw.lrs, weight_decays=sw.weight_decays, cached=False
        )
        it = make_eval_iterator(cfg.data, split=cfg.data.train_split, patch_size=8, global_batch_size=8)
        batch = {key: value for key, value in next(iter(it)).items() if key != "valid"}
        for _ in range(3):
            state, _ = step(state, bp, batch)
        results[(wds, decay)] = state["params"]
    swept = results[((0.0, 0.5), None)]
    for column, single in ((0, results[((), 0.0)]), (1, results[((), 0.5)])):
        for a, b in zip(jax.tree.leaves(swept), jax.tree.leaves(single), strict=True):
            np.testing.assert_allclose(a[:, column], b[:, 0], rtol=1e-5, atol=1e-6)
    kernel = lambda p: np.asarray(jax.tree.leaves(p)[-1])  # noqa: E731
    assert not np.allclose(kernel(results[((), 0.0)]), kernel(results[((), 0.5)]), rtol=1e-4)


def test_a_split_too_small_for_shots_and_test_images_skips_it_with_one_line():
    cfg = _tiny_pretrain_config()
    cfg.eval.fewshot.shots = 200  # 200 training images: every one is a shot
    fewshot = FewShot(cfg, make_mesh())
    assert "all taken as the 200 shots per class" in fewshot.skip and "\n" not in fewshot.skip
    assert fewshot.run({}) == {}
