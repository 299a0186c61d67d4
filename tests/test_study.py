"""scripts/study.py end to end on tiny synthetic data: every arm, every probe, study.json and report.md."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--data=synthetic",
    "--seeds=1,2",
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
            "progress_bar=False",
        )
    ),
    *(f"--probe_set={kv}" for kv in ("total_steps=2", "batch_size=8", "progress_bar=False")),
]


def study(workdir, *extra):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "study.py"), f"--workdir={workdir}", *TINY, *extra],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )


@pytest.mark.slow
def test_study_end_to_end_writes_the_schema_and_skips_finished_arms(tmp_path):
    r = study(tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "study.json").read_text())
    assert set(s["arms"]) == {"naraim", "aim", "random_init"} and s["seeds"] == [1, 2]
    for arm in s["arms"].values():
        for key in ("top1", "knn_top1", "linear_top1", "wall_seconds"):
            assert isinstance(arm[key], float) and arm[key] >= 0
        assert set(arm["per_block_top1"]) == {"0", "1", "mean_last_6"}
        assert sum(b["count"] for b in arm["per_aspect_ratio_bin"]) == 16
        assert arm["per_aspect_ratio_bin"][-1]["bin"][1] is None
        assert set(arm["seeds"]) == {"1", "2"} and set(arm["spread"]) == {"top1", "knn_top1", "linear_top1"}
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
