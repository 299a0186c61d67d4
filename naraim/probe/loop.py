"""The training loop shared by frozen probes and fine-tuning: steps, logging, periodic evaluation,
checkpoints of (state, data position) and exact resume."""

import time
from collections.abc import Callable, Iterator

import jax
import numpy as np
from ml_collections import ConfigDict

from naraim.console import progress
from naraim.infra.checkpoint import Checkpointer, abstract_like
from naraim.infra.metrics_log import MetricsLogger
from naraim.stop_signals import raise_if_stopped


def _mean(window: list[dict], key: str) -> float:
    return float(np.mean([np.mean(m[key]) for m in window]))


def train_loop(
    cfg: ConfigDict,
    workdir: str,
    step_fn: Callable[[dict, dict], tuple[dict, dict]],
    state: dict,
    batches: Iterator,
    logger: MetricsLogger,
    evaluate: Callable[[dict, int], None] | None = None,
) -> dict:
    """Runs step_fn(state, local_batch) -> (state, metrics) from the newest checkpoint in WORKDIR/checkpoints
    (if any) to cfg.total_steps; returns the final state.

    metrics: 'loss', 'accuracy', 'grad_norm' (scalars, or one per head: logged as their mean), 'lr'.
    batches: get_state() / set_state() (grain iterators, CacheBatches) are saved with the state every
    cfg.checkpoint_every steps (0: never) and at the end. evaluate(state, step) runs every cfg.eval_every
    steps (0: never) before the last.
    """
    checkpointer = Checkpointer(workdir, cfg.keep_checkpoints, keep_every=0) if cfg.checkpoint_every else None
    step = 0
    if checkpointer is not None and (saved := checkpointer.latest_step()):
        state, data_state = checkpointer.restore(saved, abstract_like(state))
        batches.set_state(data_state)
        step = saved
    bar = progress(cfg.total_steps, cfg.protocol, "step", initial=step, enabled=cfg.progress_bar)
    window, window_start = [], time.time()
    try:
        while step < cfg.total_steps:
            raise_if_stopped()  # a Ctrl-C whose KeyboardInterrupt Python dropped
            state, metrics = step_fn(state, next(batches))
            step += 1
            window.append(metrics)
            last = step == cfg.total_steps
            if step % cfg.log_every == 0 or last:
                window = jax.device_get(window)
                ips = len(window) * cfg.batch_size / max(time.time() - window_start, 1e-9)
                record = {k: _mean(window, k) for k in ("loss", "accuracy", "grad_norm")}
                record.update(lr=float(window[-1]["lr"]), images_per_sec=ips)
                logger.write(step, "train", record)
                bar.update(step, f"loss {record['loss']:.4f} lr {record['lr']:.2e} {ips:.0f} img/s")
                window, window_start = [], time.time()
            if checkpointer is not None and (step % cfg.checkpoint_every == 0 or last):
                checkpointer.save(step, state, batches.get_state())
            if evaluate is not None and cfg.eval_every and step % cfg.eval_every == 0 and not last:
                evaluate(state, step)
                window_start = time.time()
    finally:
        bar.close()
        if checkpointer is not None:
            checkpointer.wait()
            checkpointer.close()
    return state
