"""scripts/study.py end to end on tiny synthetic data: every arm, every probe, study.json and report.md."""

import json
import math
import os

import pytest
from script_runner import run_script

from naraim.probe.results import write_results
from naraim.study.report import write_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--data=synthetic",
    "--seeds=1",  # two seeds' aggregation: the report tests below, on fixtures
    "--steps=2",
    *(
        f"--set={kv}"
        for kv in (
            "model.variant=Pico/8",
            "data.image_size=32",
            "data.max_tokens=16",
            "batch_size=8",
            "data.synthetic.train_size=48",
            "data.synthetic.validation_size=16",
            "eval.num_examples=8",
            "eval.batch_size=8",
            "eval.fewshot.num_eval_examples=16",
            "progress_bar=False",
        )
    ),
    *(f"--probe_set={kv}" for kv in ("total_steps=2", "batch_size=8", "progress_bar=False")),
]


def study(workdir, *extra):
    return run_script("scripts/study.py", f"--workdir={workdir}", *TINY, *extra, timeout=600)


@pytest.mark.slow
def test_study_end_to_end_writes_the_schema_and_skips_finished_arms(tmp_path):
    r = study(tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "study.json").read_text())
    assert set(s["arms"]) == {"naraim", "aim", "random_init"} and s["seeds"] == [1]
    for arm in s["arms"].values():
        for key in ("top1", "knn_top1", "linear_top1", "wall_seconds"):
            assert isinstance(arm[key], float) and arm[key] >= 0
        assert set(arm["per_block_top1"]) == {"0", "1", "mean_last_6"}
        assert sum(b["count"] for b in arm["per_aspect_ratio_bin"]) == 16
        assert arm["per_aspect_ratio_bin"][-1]["bin"][1] is None
        assert set(arm["seeds"]) == {"1"} and set(arm["spread"]) == {"top1", "knn_top1", "linear_top1"}
        for seed in arm["seeds"].values():
            assert seed["selected"]["features"] in (0, 1, "mean_last_6")
    assert set(s["gaps"]) == {"naraim_minus_random_init", "aim_minus_random_init"}
    assert s["plan"]["steps"] == 2 and s["commands"][0].startswith("python scripts/study.py")
    report = (tmp_path / "report.md").read_text()
    assert "| random_init |" in report and "scripts/study.py" in report
    assert (tmp_path / "accuracy_by_block.png").read_bytes()[:4] == b"\x89PNG"
    # the random-init arm is the initialisation, never trained
    assert sorted(os.listdir(tmp_path / "random_init_s1" / "checkpoints")) == ["0"]
    again = study(tmp_path)
    assert again.returncode == 0 and "pre-training" not in again.stderr and "probe:" not in again.stderr
    assert json.loads((tmp_path / "study.json").read_text())["arms"] == s["arms"]


@pytest.mark.slow
def test_study_refuses_bad_arguments_in_one_line(tmp_path):
    for extra, needle in (
        (["--seeds=x"], "--seeds"),
        (["--set=nokey"], "KEY=VALUE"),
        (["--set=model.zzz=1"], "zzz"),
    ):
        r = study(tmp_path / "bad", *extra)
        lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
        assert r.returncode == 1 and len(lines) == 1 and needle in lines[0], r.stderr[-1000:]


def test_plan_gives_pretraining_what_the_measured_probes_leave(tmp_path, monkeypatch):
    from naraim.study import run

    monkeypatch.setattr(run, "measure_step_seconds", lambda cfg: 0.5)
    s = run.Study(
        "synthetic", str(tmp_path), [1, 2], 10.0, None, "configs/small.py", [], [], "configs/probe.py"
    )
    s.start -= 60  # a minute already spent (data preparation, the first random-init arm)
    arm = tmp_path / "random_init_s1"
    arm.mkdir(parents=True)
    arm.joinpath("arm.json").write_text(
        json.dumps({"probe_attentive_seconds": 40.0, "probe_knn_seconds": 5.0, "probe_linear_seconds": 15.0})
    )
    plan = s.plan("synthetic")
    left = 600 - 60 - 5 * 60.0  # budget - time so far - 5 more arms' probes
    assert plan["probe_seconds"] == 60.0
    assert abs(plan["steps"] - run.SAFETY * left / (4 * 0.5 * 1.15)) <= 2
    assert json.loads((tmp_path / "plan.json").read_text())["steps"] == plan["steps"]


def _probe_results(heads: list[tuple], bins: list[tuple]) -> dict:
    """results.json of a probe: heads [(features, lr, minival_top1, top1)], the selected one the best on
    minival; bins [(lo, hi, count, top1)] for the selected head."""
    per_bin = [{"bin": [lo, hi], "count": c, "top1": t} for lo, hi, c, t in bins]
    per_head = [
        {
            "features": f,
            "lr": lr,
            "minival_top1": m,
            "top1": t,
            "top5": 1.0,
            "num_examples": 10,
            "per_aspect_ratio_bin": per_bin,
        }
        for f, lr, m, t in heads
    ]
    best = max(per_head, key=lambda h: h["minival_top1"])
    return {
        "top1": best["top1"],
        "top5": 1.0,
        "num_examples": 10,
        "per_aspect_ratio_bin": per_bin,
        "selected": {"features": best["features"], "lr": best["lr"]},
        "per_head": per_head,
    }


def test_the_report_aggregates_seeds_into_means_spreads_and_gaps(tmp_path):
    """study.json and report.md from a fixture of per-arm, per-seed probe results, number by number."""

    attentive = {  # (arm, seed) -> heads (block, lr, minival, validation top-1)
        ("naraim", 1): [
            (0, 1e-3, 0.5, 0.40),
            (0, 1e-2, 0.6, 0.42),
            (1, 1e-3, 0.7, 0.50),
            (1, 1e-2, 0.2, 0.90),
        ],
        ("naraim", 2): [
            (0, 1e-3, 0.9, 0.44),
            (0, 1e-2, 0.1, 0.99),
            (1, 1e-3, 0.3, 0.46),
            (1, 1e-2, 0.4, 0.48),
        ],
        ("random_init", 1): [
            (0, 1e-3, 0.5, 0.30),
            (0, 1e-2, 0.4, 0.9),
            (1, 1e-3, 0.3, 0.2),
            (1, 1e-2, 0.6, 0.32),
        ],
        ("random_init", 2): [
            (0, 1e-3, 0.2, 0.9),
            (0, 1e-2, 0.3, 0.36),
            (1, 1e-3, 0.1, 0.9),
            (1, 1e-2, 0.2, 0.34),
        ],
    }
    knn = {("naraim", 1): 0.35, ("naraim", 2): 0.39, ("random_init", 1): 0.30, ("random_init", 2): 0.28}
    linear = {("naraim", 1): 0.45, ("naraim", 2): 0.41, ("random_init", 1): 0.33, ("random_init", 2): 0.37}
    bins = {1: [(0, 1, 4, 0.25), (1, math.inf, 6, None)], 2: [(0, 1, 4, 0.75), (1, math.inf, 6, 0.5)]}
    for (arm, seed), heads in attentive.items():
        folder = tmp_path / f"{arm}_s{seed}"
        for probe, results in (
            ("probe_attentive", _probe_results(heads, bins[seed])),
            ("probe_knn", _probe_results([("mean_last_6", 20, 0.5, knn[arm, seed])], bins[seed])),
            ("probe_linear", _probe_results([(1, 0.1, 0.5, linear[arm, seed])], bins[seed])),
        ):
            (folder / probe).mkdir(parents=True)
            write_results(str(folder / probe), results)
        (folder / "arm.json").write_text(json.dumps({"pretrain_seconds": 10.0 * seed, "probe_seconds": 5.0}))
    meta = {
        "data": "x",
        "date": "d",
        "commands": ["python scripts/study.py"],
        "plan": {"steps": 3, "chosen_by": "t"},
    }
    study = write_report(str(tmp_path), ("naraim", "random_init"), [1, 2], meta)
    naraim, control = study["arms"]["naraim"], study["arms"]["random_init"]
    # attentive: naraim selects (1, 1e-3) -> 0.50 and (0, 1e-3) -> 0.44; the control 0.32 and 0.36
    assert naraim["top1"] == pytest.approx(0.47) and control["top1"] == pytest.approx(0.34)
    assert naraim["spread"]["top1"] == pytest.approx({"min": 0.44, "max": 0.50, "std": 0.03})
    assert naraim["knn_top1"] == pytest.approx(0.37) and naraim["linear_top1"] == pytest.approx(0.43)
    assert naraim["spread"]["knn_top1"] == pytest.approx({"min": 0.35, "max": 0.39, "std": 0.02})
    assert study["gaps"]["naraim_minus_random_init"] == pytest.approx(
        {"top1": 0.13, "knn_top1": 0.08, "linear_top1": 0.08}
    )
    # per block: the best lr on minival per block and seed, then the mean over seeds
    assert naraim["per_block_top1"] == pytest.approx({"0": (0.42 + 0.44) / 2, "1": (0.50 + 0.48) / 2})
    assert control["per_block_top1"] == pytest.approx({"0": (0.30 + 0.36) / 2, "1": (0.32 + 0.34) / 2})
    assert [b["top1"] for b in naraim["per_aspect_ratio_bin"]] == pytest.approx([0.5, 0.5])  # None skipped
    assert naraim["wall_seconds"] == pytest.approx((15.0 + 25.0) / 2)
    report = (tmp_path / "report.md").read_text()
    assert "| naraim | 47.0 (44.0-50.0) | 37.0 (35.0-39.0) | 43.0 (41.0-45.0) | 40 |" in report
    assert "| random_init | 34.0 (32.0-36.0) |" in report
    assert "- naraim_minus_random_init: top1 +13.0, knn_top1 +8.0, linear_top1 +8.0" in report
    assert "| naraim | 43.0 | 49.0 |" in report


def test_later_seeds_are_replanned_from_what_the_finished_arms_took(tmp_path, monkeypatch):
    """Seed 1's arms took 2 s per step (not the measured 0.5) and 100 s of probes: seed 2's arms get the
    steps the budget left affords, recorded in plan.json; the first seed keeps the plan's."""
    from naraim.study import run

    s = run.Study(
        "synthetic", str(tmp_path), [1, 2], 30.0, None, "configs/small.py", [], [], "configs/probe.py"
    )
    plan = {"steps": 400, "chosen_by": "t"}
    assert s.round_steps(plan, 1) == 400
    probes = {f"probe_{p}_seconds": 100.0 / len(run.PROBES) for p in run.PROBES}
    for arm in run.ARMS:
        folder = tmp_path / f"{arm}_s1"
        folder.mkdir()
        seconds = 0.0 if arm == "random_init" else 800.0
        folder.joinpath("arm.json").write_text(json.dumps({"pretrain_seconds": seconds, **probes}))
    s.start -= 1_000  # 1,000 s of the 1,800 spent
    left = 1_800 - 1_000 - 3 * 100.0  # minus the 3 arms' probes of seed 2
    steps = s.round_steps(plan, 2)
    assert abs(steps - run.SAFETY * left / (2 * 2.0)) <= 2 and steps < 400
    assert json.loads((tmp_path / "plan.json").read_text())["steps_by_seed"] == {"1": 400, "2": steps}
    s.budget, plan["steps_by_seed"] = 300.0, {"1": 400}  # a generous budget: never more than planned
    assert s.round_steps(plan, 2) == 400
    assert s.round_steps(plan, 2) == 400  # recorded: a resumed study keeps it


def test_the_report_shows_each_arms_accuracy_by_token_budget_and_aspect_ratio(tmp_path):
    """A native study's probes carry per_token_budget: study.json averages it over seeds, report.md has a row
    per arm and budget with a column per aspect-ratio bin."""
    bins = [(0, 1, 4, 0.5), (1, math.inf, 6, 0.5)]
    by_seed = {
        1: {"16": (0.2, [0.1, None]), "64": (0.4, [0.3, 0.5])},
        2: {"16": (0.4, [0.3, 0.6]), "64": (0.6, [0.5, 0.7])},
    }
    for arm in ("naraim_native", "random_init"):
        for seed, budgets in by_seed.items():
            folder = tmp_path / f"{arm}_s{seed}"
            attentive = _probe_results([(0, 1e-3, 0.5, 0.5)], bins)
            attentive["per_token_budget"] = {
                b: {
                    "top1": top1,
                    "top5": 1.0,
                    "num_examples": 10,
                    "per_aspect_ratio_bin": [
                        {"bin": [lo, hi], "count": c, "top1": t}
                        for (lo, hi, c, _), t in zip(bins, per_bin, strict=True)
                    ],
                }
                for b, (top1, per_bin) in budgets.items()
            }
            for probe, results in (
                ("probe_attentive", attentive),
                ("probe_knn", _probe_results([("mean_last_6", 20, 0.5, 0.3)], bins)),
                ("probe_linear", _probe_results([(1, 0.1, 0.5, 0.3)], bins)),
            ):
                (folder / probe).mkdir(parents=True)
                write_results(str(folder / probe), results)
            (folder / "arm.json").write_text(json.dumps({"pretrain_seconds": 1.0}))
    meta = {"data": "x", "date": "d", "commands": ["c"], "plan": {"steps": 3, "chosen_by": "t"}}
    study = write_report(str(tmp_path), ("naraim_native", "random_init"), [1, 2], meta)
    native = study["arms"]["naraim_native"]["per_token_budget"]
    assert native["16"]["top1"] == pytest.approx(0.3) and native["64"]["top1"] == pytest.approx(0.5)
    assert [b["top1"] for b in native["16"]["per_aspect_ratio_bin"]] == pytest.approx(
        [0.2, 0.6]
    )  # None skipped
    report = (tmp_path / "report.md").read_text()
    assert "| naraim_native | 16 | 30.0 | 20.0 | 60.0 |" in report
    assert "| random_init | 64 | 50.0 | 40.0 | 60.0 |" in report


def test_a_native_study_adds_the_packed_arm_and_probes_every_arm_at_its_budgets(tmp_path, monkeypatch):
    from naraim.study import run

    trained, probed = {}, {}

    def train(cfg, folder):
        os.makedirs(folder)
        trained[os.path.basename(folder)] = cfg

    monkeypatch.setattr(run, "train", train)
    monkeypatch.setattr(
        run, "run_probe", lambda cfg, folder: probed.setdefault(os.path.relpath(folder, tmp_path), cfg)
    )
    s = run.Study(
        "synthetic", str(tmp_path), [1], 30.0, 2, "configs/small.py", [], [], "configs/probe.py", True
    )
    assert s.arms == ("naraim", "aim", "naraim_native", "random_init")
    for arm in s.arms:
        s.run_arm(arm, 1, "synthetic", 2)
    native = trained["naraim_native_s1"].data
    assert native.packing == "first_fit" and tuple(native.token_budgets) == (16, 32, 64, 128)
    assert trained["naraim_s1"].data.packing == "none"
    for arm in s.arms:
        assert tuple(probed[f"{arm}_s1/probe_attentive"].probe.eval_token_budgets) == (16, 32, 64, 128)
        assert tuple(probed[f"{arm}_s1/probe_knn"].probe.eval_token_budgets) == ()
