"""A diverging run stops with one message naming the step and keeps the last good checkpoint."""

import os
import subprocess
import sys

import pytest

from naraim.infra.checkpoint import restore_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    args = [
        "--config=configs/demo.py:naraim",
        "--config.total_steps=20",
        "--config.batch_size=8",
        "--config.data.image_size=32",
        "--config.data.max_tokens=16",
        "--config.log_every=10",
        "--config.checkpoint_every=1",
        "--config.eval.num_examples=0",
        "--config.optim.schedule=constant",
        "--config.optim.lr=1e30",  # params jump to ~1e30 after the first update; LayerNorm overflows -> NaN
        "--config.optim.clip_norm=0",
    ]
    r = subprocess.run(
        [sys.executable, "scripts/pretrain.py", f"--workdir={tmp_path}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert (
        len(lines) == 1 and "not finite at step 2" in lines[0] and "checkpoint at step 1 is kept" in lines[0]
    )
    assert "Traceback" not in r.stderr
    params, _, step = restore_params(str(tmp_path))
    assert step == 1
    assert all(bool(abs(x).max() < 1e38) for x in __import__("jax").tree_util.tree_leaves(params))
