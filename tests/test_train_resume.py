"""Exact resume: a run SIGKILLed mid-run and re-run ends bitwise equal to an uninterrupted run."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from script_runner import killable_env, run_script

from naraim.infra.checkpoint import restore_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 10
ARGS = [
    "--config=configs/demo.py:naraim",
    f"--config.total_steps={STEPS}",
    "--config.batch_size=8",
    "--config.data.image_size=32",
    "--config.data.max_tokens=16",
    "--config.log_every=1",
    "--config.checkpoint_every=1",
    "--config.eval_every=5",
    "--config.eval.num_examples=8",
    "--config.eval.batch_size=8",
    "--config.eval.num_images=2",
    "--config.eval.fewshot.num_eval_examples=16",  # the few-shot path resumes too, on a few images
    "--config.optim.warmup_steps=2",
    "--config.optim.cooldown_steps=2",
]


PACKED = [  # token budgets per image, packed rows (issue 25): the packer's window is in the resumed state
    "--config.data.token_budgets=(2,4,8,16)",
    "--config.data.transforms=('random_crop_native','fit_to_token_budget','horizontal_flip')",
    "--config.data.packing=first_fit",
    "--config.data.packing_bins=4",
]


def command(workdir, extra=()):
    return [
        sys.executable,
        os.path.join(ROOT, "scripts", "pretrain.py"),
        f"--workdir={workdir}",
        *ARGS,
        *extra,
    ]


def saved_steps(workdir):
    path = os.path.join(workdir, "checkpoints")
    return [int(d) for d in os.listdir(path) if d.isdigit()] if os.path.isdir(path) else []


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], PACKED], ids=["one_image_per_row", "packed"])
def test_sigkill_and_rerun_matches_uninterrupted_run(tmp_path, extra):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    done = run_script(*command(reference, extra)[1:], timeout=300)
    assert done.returncode == 0, done.stderr
    # Checkpoints are saved every step, so when step 2 appears the save of step 3 is usually in flight.
    proc = subprocess.Popen(
        command(killed, extra),
        cwd=ROOT,
        env=killable_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and max(saved_steps(killed), default=0) < 2:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed_from = max(saved_steps(killed))
    assert proc.returncode == -signal.SIGKILL and 2 <= resumed_from < STEPS
    rerun = run_script(*command(killed, extra)[1:], timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    # it resumed (not restarted: training is deterministic, so a restart would end the same) from the
    # newest checkpoint and ran only the remaining steps
    assert f"resuming from step {resumed_from} " in rerun.stderr and "starting a new run" not in rerun.stderr
    ran = [int(m) for m in re.findall(r"^train: (\d+)/", rerun.stderr, re.MULTILINE)]
    assert ran == list(range(resumed_from + 1, STEPS + 1)), rerun.stderr
    ref_params, _, ref_step = restore_params(str(reference))
    params, cfg, step = restore_params(str(killed))
    assert step == ref_step == STEPS and cfg.total_steps == STEPS
    leaves = jax.tree_util.tree_leaves_with_path(ref_params)
    for (path, a), b in zip(leaves, jax.tree_util.tree_leaves(params), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))

    # metrics.jsonl holds each step once, with the reference run's values
    def records(workdir):
        lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
        return [(x["step"], x["split"], x["loss"], x.get("lr")) for x in lines]

    assert records(killed) == records(reference)
    # train rows count images, not rows: more than one image a row when packed
    rows = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    images = [r["images"] for r in rows if r["split"] == "train"]
    assert all(n > 8 for n in images) if extra else all(n == 8 for n in images)
    assert all(0 <= r["pad_fraction"] < 1 for r in rows if r["split"] == "train")
