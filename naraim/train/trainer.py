"""The pre-training loop: init or resume, jitted steps, logging, evaluation, checkpoints, NaN stop."""

import os
import time

import jax
import numpy as np
from ml_collections import ConfigDict

from naraim.data.config import token_budget
from naraim.data.pipeline import make_train_iterator
from naraim.errors import UserError
from naraim.model.model import make_model
from naraim.model.sizes import patch_size
from naraim.train.checkpoint import Checkpointer, abstract_like, write_config
from naraim.train.config import validate_pretrain_config
from naraim.train.evaluation import Evaluator
from naraim.train.mesh import global_batch, make_mesh
from naraim.train.metrics_log import MetricsLogger
from naraim.train.optimizer import make_optimizer
from naraim.train.progress import ProgressBar
from naraim.train.step import init_state, make_train_step


class TrainingDiverged(UserError):
    """The loss or gradient norm became NaN/Inf; the last good checkpoint is kept."""


def train(cfg: ConfigDict, workdir: str) -> dict:
    """Pre-trains per `cfg` into `workdir`, resuming from its newest checkpoint if there is one.

    Returns {'step', 'train_loss' (mean over the last logging window), 'val_loss' (last evaluation, if any)}.
    """
    validate_pretrain_config(cfg)
    train_iter = make_train_iterator(
        cfg.data,
        patch_size=patch_size(cfg.model.variant),
        global_batch_size=cfg.batch_size,
        seed=cfg.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    mesh = make_mesh()
    model = make_model(cfg.model)
    optimizer, schedule = make_optimizer(cfg.optim, cfg.total_steps)
    state, shardings = init_state(model, optimizer, cfg, mesh)
    checkpointer = Checkpointer(workdir, cfg.keep_checkpoints, cfg.keep_every)
    step = checkpointer.latest_step() or 0
    if step:
        state, iterator_state = checkpointer.restore(step, abstract_like(state))
        train_iter.set_state(iterator_state)
    else:
        write_config(workdir, cfg)

    train_step = make_train_step(model, optimizer, schedule, cfg, mesh, shardings)
    evaluator = Evaluator(model, cfg, mesh, shardings["params"], workdir) if cfg.eval.num_examples else None
    logger = MetricsLogger(workdir, cfg, resume_step=step)
    bar = ProgressBar(cfg.total_steps, cfg.batch_size, enabled=cfg.progress_bar)
    summary = {"step": step}
    window, window_start, last_saved = [], time.time(), step or None

    def check(done_step: int, metrics: dict) -> dict:
        metrics = jax.device_get(metrics)
        if not metrics["finite"]:
            checkpointer.wait()
            kept = (
                f"the last good checkpoint (step {last_saved}) is kept"
                if last_saved
                else "no checkpoint was saved"
            )
            raise TrainingDiverged(
                f"loss or gradient norm is not finite at step {done_step} (loss={float(metrics['loss'])}, "
                f"grad_norm={float(metrics['grad_norm'])}); {kept} in {workdir}; lower optim.lr or raise "
                "optim.warmup_steps"
            )
        return metrics

    pending = None
    try:
        while step < cfg.total_steps:
            batch = global_batch(next(train_iter), mesh)
            state, metrics = train_step(state, batch)
            step += 1
            if pending is not None:
                window.append(check(*pending))
            pending = (step, metrics)
            last = step == cfg.total_steps
            if step % cfg.log_every == 0 or step % cfg.checkpoint_every == 0 or last:
                window.append(check(*pending))
                pending = None
            if (step % cfg.log_every == 0 or last) and window:
                elapsed = time.time() - window_start
                ips = len(window) * cfg.batch_size / max(elapsed, 1e-9)
                record = {
                    "loss": float(np.mean([m["loss"] for m in window])),
                    "grad_norm": float(np.mean([m["grad_norm"] for m in window])),
                    "lr": float(window[-1]["lr"]),
                    "images_per_sec": ips,
                    "tokens_per_sec": ips * token_budget(cfg.data, patch_size(cfg.model.variant)),
                }
                logger.write(step, "train", record)
                bar.update(step, record["loss"], record["lr"], ips)
                summary.update(step=step, train_loss=record["loss"])
                window, window_start = [], time.time()
            if step % cfg.checkpoint_every == 0 or last:
                checkpointer.save(step, state, train_iter.get_state())
                last_saved = step
            if evaluator is not None and (step % cfg.eval_every == 0 or last):
                val, pngs = evaluator.run(state["params"], step)
                if val:
                    logger.write(step, "val", val)
                    summary["val_loss"] = val["loss"]
                for path in pngs:
                    logger.write_image(
                        step, os.path.splitext(os.path.basename(path))[0].rsplit("_", 1)[0], path
                    )
                window_start = time.time()
        summary["step"] = step
    finally:
        bar.close()
        checkpointer.wait()
        checkpointer.close()
        logger.close()
    return summary
