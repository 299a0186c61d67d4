"""Probes at several token budgets: results.json per_token_budget with each budget's top-1 and its bins."""

import json

import numpy as np
import pytest
from probe_helpers import load_config, pretrain_workdir, tiny_probe_config

from naraim.data.pipeline import make_eval_iterator
from naraim.errors import UserError
from naraim.probe import config as probe_config
from naraim.probe import protocols
from naraim.probe.config import token_budget_data
from naraim.probe.runner import prepare, run_probe


@pytest.fixture(scope="module")
def workdir():
    return pretrain_workdir("naraim")


def test_a_budget_sizes_every_evaluation_image_to_at_most_that_many_patches(workdir):
    cfg = prepare(tiny_probe_config(workdir))[0]
    for budget in (2, 5, 16):
        data = token_budget_data(cfg.data, budget)
        batch = next(iter(make_eval_iterator(data, split="validation", patch_size=8, global_batch_size=12)))
        assert batch["patches"].shape[1] == budget
        assert (batch["length"] <= budget).all() and (np.prod(batch["grid"], axis=1) == batch["length"]).all()
        if budget == 16:  # 32 px images of several aspect ratios: the largest grids use most of the budget
            assert batch["length"].max() >= 12


@pytest.mark.slow
def test_the_probe_reports_each_budget_and_its_aspect_ratio_bins(workdir, tmp_path, monkeypatch):
    seen = []  # (rows' tokens, longest image) of every validation batch the probe evaluated

    def recording(data_cfg, **kw):
        batches = make_eval_iterator(data_cfg, **kw)
        if kw["split"] == "validation":
            seen.extend((b["patches"].shape[1], int(b["length"].max())) for b in batches)
        return batches

    monkeypatch.setattr(protocols, "make_eval_iterator", recording)
    cfg = tiny_probe_config(workdir)
    cfg.probe.eval_token_budgets = (4, 16)
    cfg.data.eval_transforms = ("fit_to_token_budget",)  # the run's own evaluation is then budget 16
    results = run_probe(cfg, str(tmp_path))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["per_token_budget"]) == {"4", "16"}
    for r in saved["per_token_budget"].values():
        assert r["num_examples"] == 24 and sum(b["count"] for b in r["per_aspect_ratio_bin"]) == 24
        assert r["per_aspect_ratio_bin"][-1]["bin"] == [2.0, None]
    assert {n for n, _ in seen} == {4, 16} and all(longest <= n for n, longest in seen)
    sixteen = results["per_token_budget"]["16"]
    assert {k: sixteen[k] for k in ("top1", "top5", "per_aspect_ratio_bin")} == {
        k: results[k] for k in ("top1", "top5", "per_aspect_ratio_bin")
    }


@pytest.mark.parametrize("protocol", ["knn", "finetune"])
def test_budgets_outside_the_frozen_protocols_are_a_user_error(workdir, tmp_path, protocol):
    cfg = tiny_probe_config(workdir, protocol)
    cfg.probe.eval_token_budgets = (4,)
    with pytest.raises(UserError, match="eval_token_budgets"):
        run_probe(cfg, str(tmp_path))


@pytest.mark.parametrize("train_transforms", ["pretraining", "eval"])
def test_a_packed_pretraining_recipe_is_probed_one_image_per_row(workdir, train_transforms):
    pretrain = load_config("demo", "naraim")
    pretrain.data.token_budgets, pretrain.data.packing = (4, 16), "first_fit"
    pretrain.data.transforms = ("random_crop_native", "fit_to_token_budget", "horizontal_flip")
    cfg = tiny_probe_config(workdir)
    cfg.train_transforms = train_transforms
    resolved = probe_config.resolve(cfg, pretrain)
    assert resolved.data.packing == "none"
    assert tuple(resolved.data.token_budgets) == ((4, 16) if train_transforms == "pretraining" else ())
    probe_config.validate(resolved)
