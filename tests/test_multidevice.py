"""Data parallel, FSDP and gradient accumulation on 4 simulated CPU devices, and 2 processes on loopback, give
the losses of one device."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import json, os, sys
import jax, numpy as np
from jax.sharding import PartitionSpec as P
from naraim.infra.flags import load_config_file
from naraim.data.pipeline import make_train_iterator
from naraim.model.model import make_model
from naraim.infra.mesh import global_batch, make_mesh
from naraim.infra.optimizer import make_optimizer
from naraim.train.step import init_state, make_train_step

assert jax.device_count() == 4
base = load_config_file("configs/demo.py:naraim")
base.batch_size, base.data.image_size, base.data.max_tokens = 8, 32, 16
base.optim.warmup_steps, base.optim.cooldown_steps, base.total_steps = 1, 1, 10
it = make_train_iterator(base.data, patch_size=8, global_batch_size=8, seed=0)
batches = [next(it) for _ in range(3)]
out = {}
runs = [("one", 1, False, 1), ("dp", 4, False, 1), ("fsdp", 4, True, 1), ("accum", 4, False, 2)]
for name, ndev, fsdp, micro in runs:
    cfg = base.copy_and_resolve_references()
    cfg.mesh.fsdp, cfg.micro_batches = fsdp, micro
    mesh = make_mesh(jax.devices()[:ndev])
    model = make_model(cfg.model)
    opt, sched = make_optimizer(cfg.optim, cfg.total_steps)
    state, shardings = init_state(model, opt, cfg, mesh)
    step = make_train_step(model, opt, sched, cfg, mesh, shardings)
    losses = []
    for b in batches:
        gb = global_batch(b, mesh)
        for key, x in gb.items():  # every device holds its own quarter of the examples
            shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
            assert [s.data.shape[0] for s in shards] == [8 // ndev] * ndev, (key, x.sharding)
            rows = [np.asarray(s.data) for s in shards]
            np.testing.assert_array_equal(np.concatenate(rows), b[key])
        state, m = step(state, gb)
        losses.append(float(m["loss"]))
    # parameters and optimizer state after the steps: replicated, or FSDP-sharded over 'data'
    sharded = 0
    trained = {"params": state["params"], "opt": state["opt_state"]}
    for path, x in jax.tree_util.tree_leaves_with_path(trained):
        shapes = {tuple(s.data.shape) for s in x.addressable_shards}
        divisible = [d for d in range(x.ndim) if x.shape[d] % ndev == 0]
        if fsdp and x.size >= 1024 and divisible:
            dim = max(divisible, key=lambda d: (x.shape[d], -d))
            want = tuple(n // ndev if d == dim else n for d, n in enumerate(x.shape))
            assert shapes == {want}, (jax.tree_util.keystr(path), shapes, want)
            starts = sorted(s.index[dim].start or 0 for s in x.addressable_shards)
            assert starts == [i * x.shape[dim] // ndev for i in range(ndev)], jax.tree_util.keystr(path)
            sharded += 1
        else:
            assert shapes == {x.shape} and x.sharding.is_fully_replicated, jax.tree_util.keystr(path)
    out[name] = losses
    out[name + "_sharded_leaves"] = sharded
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_data_parallel_fsdp_and_accumulation_match_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.split("RESULT")[-1])
    assert out["one"][-1] < out["one"][0]
    for name in ("dp", "fsdp", "accum"):
        np.testing.assert_allclose(out[name], out["one"], rtol=2e-5, err_msg=name)
    # FSDP shards the large parameters and their AdamW moments; data parallelism shards none
    assert out["fsdp_sharded_leaves"] >= 20 and out["dp_sharded_leaves"] == out["accum_sharded_leaves"] == 0


ARGS = [
    "--config=configs/demo.py:naraim",
    "--config.total_steps=3",
    "--config.batch_size=8",
    "--config.data.image_size=32",
    "--config.data.max_tokens=16",
    "--config.log_every=1",
    "--config.checkpoint_every=3",
    "--config.eval.num_examples=0",
    "--config.optim.warmup_steps=1",
    "--config.optim.cooldown_steps=1",
    # Processes read disjoint strided shards: without shuffling, random transforms and random prefixes the
    # global batch holds the same examples as a single process's batch (in another order).
    "--config.data.shuffle=False",
    "--config.data.transforms=('native_aspect_ratio_resize',)",
    "--config.model.attention=causal",
]


def train_losses(workdir) -> list[float]:
    lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    return [x["loss"] for x in lines if x["split"] == "train"]


@pytest.mark.slow
def test_two_processes_on_loopback_match_one_process(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "scripts/pretrain.py", *ARGS]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [
                *cmd,
                f"--workdir={tmp_path / 'two'}",
                "--distributed",
                f"--coordinator=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    single = subprocess.run(
        [*cmd, f"--workdir={tmp_path / 'one'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    np.testing.assert_allclose(train_losses(tmp_path / "two"), train_losses(tmp_path / "one"), rtol=2e-5)
