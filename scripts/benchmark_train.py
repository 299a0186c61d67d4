"""Training-step throughput for any pre-training config: step time, images/s, tokens/s and MFU against the
device's measured matmul peak (FLOP convention in naraim/train/flops.py).

  python scripts/benchmark_train.py --config configs/naraim_b14.py --config.batch_size=8 [--steps=10] \
      [--profile=DIR]   # DIR/plugins/profile/*/: per-op times (Perfetto, TensorBoard)

Batches are random uint8 patches at the full token budget, already on the device (the input pipeline is
measured separately by scripts/benchmark_input.py). With --data_batches=K the timed steps cycle through K
batches of the config's own input pipeline instead (token budgets and packing included), also put on the
device beforehand: images/s then counts the images those batches hold, tokens/s their real tokens, and
pad_fraction is their rows' padding share.
"""

import json
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from naraim.cli import run_main
from naraim.data.config import token_budget
from naraim.data.pipeline import make_train_iterator
from naraim.infra.flags import define_config_flag, parse_flags
from naraim.infra.mesh import global_batch, make_mesh
from naraim.infra.optimizer import make_optimizer
from naraim.model.model import make_model
from naraim.model.sizes import get_size
from naraim.model.vit import make_backbone
from naraim.train.config import default_pretrain_config, fit_schedule, validate_pretrain_config
from naraim.train.flops import matmul_peak_flops, train_flops_per_step
from naraim.train.step import init_state, make_train_step

_CONFIG = define_config_flag()
_STEPS = flags.DEFINE_integer("steps", 10, "timed steps (after warm-up steps)")
_PROFILE = flags.DEFINE_string("profile", "", "if set, a jax.profiler trace of 3 more steps is written here")
_DATA_BATCHES = flags.DEFINE_integer(
    "data_batches", 0, "time on this many batches of cfg.data's training pipeline (0: random full batches)"
)


def _page_faults() -> int:
    """Minor page faults of this process so far (the host mapping fresh memory)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def random_batch(cfg, rng: np.random.Generator) -> dict:
    """A full-length batch: a near-square grid holding exactly data.max_tokens patches."""
    p = get_size(cfg.model.variant)["patch"]
    b, n = cfg.batch_size // jax.process_count(), token_budget(cfg.data, p)
    cols = next(c for c in range(int(np.sqrt(n)), 0, -1) if n % c == 0)
    rows = n // cols
    coords = np.stack(np.divmod(np.arange(n), cols), -1).astype(np.int32)
    return {
        "patches": rng.integers(0, 256, (b, n, p * p * 3), dtype=np.uint8),
        "coords": np.broadcast_to(coords, (b, n, 2)).copy(),
        "grid": np.tile(np.array([rows, cols], np.int32), (b, 1)),
        "length": np.full((b,), n, np.int32),
    }


def main() -> None:
    cfg = parse_flags(sys.argv, _CONFIG, default_pretrain_config)
    fit_schedule(cfg)
    validate_pretrain_config(cfg)
    mesh = make_mesh()
    model = make_model(cfg.model)
    optimizer, schedule = make_optimizer(cfg.optim, cfg.total_steps)
    state, shardings = init_state(model, optimizer, cfg, mesh)
    step = make_train_step(model, optimizer, schedule, cfg, mesh, shardings)
    p = get_size(cfg.model.variant)["patch"]
    if _DATA_BATCHES.value:
        it = make_train_iterator(cfg.data, patch_size=p, global_batch_size=cfg.batch_size, seed=cfg.seed)
        local = [next(it) for _ in range(_DATA_BATCHES.value)]
    else:
        local = [random_batch(cfg, np.random.default_rng(0))]
    batches = [global_batch(b, mesh) for b in local]
    batch = batches[0]
    dtype = jnp.bfloat16 if cfg.model.dtype == "bfloat16" else jnp.float32
    peak_before = matmul_peak_flops(dtype)
    on_cpu = jax.default_backend() == "cpu"
    compiled = step.lower(state, batch).compile()
    # XLA's count leaves out library calls (cuBLAS, cuDNN), so it is reported on the CPU only
    xla_flops = (compiled.cost_analysis() or {}).get("flops") if on_cpu else None
    # warm-up in rounds shaped like the timed one (steps in flight hold host buffers), until a round maps
    # no new host memory: the CPU allocator then reuses its blocks
    for _ in range(5):
        faults_before = _page_faults()
        for i in range(_STEPS.value):
            state, metrics = step(state, batches[i % len(batches)])
        jax.block_until_ready(state)
        if _page_faults() - faults_before < 1000:
            break
    faults_before, start = _page_faults(), time.perf_counter()
    for i in range(_STEPS.value):
        state, metrics = step(state, batches[i % len(batches)])
    jax.block_until_ready(state)
    step_time = (time.perf_counter() - start) / _STEPS.value
    faults_per_step = (_page_faults() - faults_before) / _STEPS.value
    if _PROFILE.value:
        with jax.profiler.trace(_PROFILE.value, create_perfetto_trace=True):
            for _ in range(3):
                state, metrics = step(state, batch)
            jax.block_until_ready(state)

    size = get_size(cfg.model.variant)
    num_params = sum(x.size for x in jax.tree_util.tree_leaves(state["params"]))
    n = token_budget(cfg.data, size["patch"])
    timed = [local[i % len(local)] for i in range(_STEPS.value)]  # the batches the timed steps ran
    images = float(np.mean([np.sum(b["length"] > 0) for b in timed])) * jax.process_count()
    real_tokens = float(np.mean([np.sum(b["length"]) for b in timed])) * jax.process_count()
    flops = train_flops_per_step(num_params, cfg.batch_size, n, size["depth"], size["width"])
    # best of a measurement before and after the timed steps (a busy machine lowers either)
    peak = max(peak_before, matmul_peak_flops(dtype)) * jax.device_count()
    result = {
        "config": cfg.variant,
        "model": cfg.model.variant,
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "attention_impl": make_backbone(cfg.model).attention_impl,  # the core the model runs
        "batch_size": cfg.batch_size,
        "tokens": n,
        "params": int(num_params),
        "step_time_s": step_time,
        "images_per_step": images,
        "pad_fraction": 1 - real_tokens / (cfg.batch_size * n),
        "images_per_sec": images / step_time,
        "tokens_per_sec": real_tokens / step_time,
        "padded_tokens_per_sec": cfg.batch_size * n / step_time,
        "model_gflop_per_step": flops / 1e9,
        "xla_gflop_per_step": None if xla_flops is None else float(xla_flops) / 1e9,
        "model_gflop_per_sec": flops / step_time / 1e9,
        f"measured_{jnp.dtype(dtype).name}_matmul_peak_gflop_per_sec": peak / 1e9,
        "mfu": flops / step_time / peak,
        "host_page_faults_per_step": faults_per_step,  # ~0 once the host allocator reuses the step's buffers
        "final_loss": float(metrics["loss"]),
    }
    if jax.process_index() == 0:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    run_main(main)
