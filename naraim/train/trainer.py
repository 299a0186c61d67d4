"""The pre-training loop: lock the workdir, start or resume (the config checked, the newest intact
checkpoint), compile once, run the jitted steps with logging, evaluation and checkpoints; stop with one
line on NaN, Ctrl-C / SIGTERM or a failing input pipeline."""

import contextlib
import os
import time

import jax
import numpy as np
from ml_collections import ConfigDict

from naraim.console import duration, progress, say
from naraim.data.pipeline import make_train_iterator
from naraim.errors import UserError
from naraim.infra.checkpoint import Checkpointer, abstract_like, read_best, save_best, write_config
from naraim.infra.mesh import global_batch, make_mesh
from naraim.infra.metrics_log import MetricsLogger
from naraim.infra.optimizer import make_optimizer
from naraim.infra.workdir import CONFIG_FILE, MUTABLE_KEYS, WorkdirLock, check_resume_config, read_json
from naraim.model.model import make_model
from naraim.model.sizes import patch_size
from naraim.stop_signals import deferred, raise_if_stopped, stop_signals
from naraim.train import plots
from naraim.train.config import fit_schedule, validate_pretrain_config
from naraim.train.evaluation import Evaluator
from naraim.train.fewshot import FewShot
from naraim.train.step import init_state, make_train_step


class TrainingDiverged(UserError):
    """The loss or gradient norm became NaN/Inf; the last good checkpoint is kept."""


class Interrupted(UserError):
    """Ctrl-C or SIGTERM: the run stopped; re-running the command resumes it."""

    exit_code = 130


def train(cfg: ConfigDict, workdir: str, force_config_change: bool = False) -> dict:
    """Pre-trains per `cfg` into `workdir`, resuming from its newest intact checkpoint if there is one.

    total_steps 0 saves the initialisation as checkpoint 0 (a random-init control for probes). A resumed run
    must have the same config but for naraim.infra.workdir.MUTABLE_KEYS (or force_config_change: recorded).
    Returns {'step', 'train_loss' (mean over the last logging window), 'val_loss' (last evaluation, if any)}.
    """
    requested = cfg.copy_and_resolve_references()
    if note := fit_schedule(cfg):
        say(note)
    validate_pretrain_config(cfg)
    with WorkdirLock(workdir), stop_signals():
        return _Run(cfg, workdir, force_config_change, _refitted_keys(workdir, requested)).run()


def _refitted_keys(workdir: str, requested: ConfigDict) -> tuple[str, ...]:
    """The schedule keys a resume may change with total_steps: when the saved run's warmup and cooldown are
    what fit_schedule made of the requested ones at the saved total_steps (a scaled smoke run, extended),
    scaling them for the new total is part of the total_steps change, not a change of the recipe."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return ()
    saved = read_json(path, "the run's config")
    at_saved = requested.copy_and_resolve_references()
    at_saved.total_steps = saved.get("total_steps", at_saved.total_steps)
    fit_schedule(at_saved)
    keys = ("warmup_steps", "cooldown_steps")
    same = all(saved.get("optim", {}).get(k) == at_saved.optim[k] for k in keys)
    return tuple(f"optim.{k}" for k in keys) if same else ()


class _Run:
    def __init__(self, cfg: ConfigDict, workdir: str, force_config_change: bool, refitted: tuple[str, ...]):
        self.cfg, self.workdir, self.force = cfg, workdir, force_config_change
        self.mutable = MUTABLE_KEYS + refitted
        self.mesh = make_mesh()
        self.model = make_model(cfg.model)
        self.optimizer, self.schedule = make_optimizer(cfg.optim, cfg.total_steps)
        self.checkpointer = Checkpointer(workdir, cfg.keep_checkpoints, cfg.keep_every)
        self.last_saved: int | None = None

    def _start(self, state) -> tuple[int, dict, object]:
        """(step, state, iterator state or None): resumed from the newest intact checkpoint, else fresh."""
        latest = self.checkpointer.latest_step()
        if latest is not None:  # a run to continue: it must be the same run
            check_resume_config(self.workdir, self.cfg, latest, self.mutable, force=self.force)
        restored = self.checkpointer.restore_newest_intact(abstract_like(state), log=say)
        if restored is None:
            say(f"starting a new run in {self.workdir}")
            write_config(self.workdir, self.cfg)
            return 0, state, None
        step, state, iterator_state = restored
        self.last_saved = step
        if step < self.cfg.total_steps:
            say(f"resuming from step {step} (checkpoint at {self.checkpointer.directory}/{step})")
        return step, state, iterator_state

    def run(self) -> dict:
        cfg = self.cfg
        train_iter = make_train_iterator(
            cfg.data,
            patch_size=patch_size(cfg.model.variant),
            global_batch_size=cfg.batch_size,
            seed=cfg.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        try:
            with contextlib.ExitStack() as stack:
                stack.callback(self.checkpointer.close)
                stack.callback(self.checkpointer.wait)
                return self._run(train_iter)
        finally:
            if hasattr(train_iter, "close"):
                train_iter.close()  # stops the grain worker processes

    def _run(self, train_iter) -> dict:
        cfg = self.cfg
        state, shardings = init_state(self.model, self.optimizer, cfg, self.mesh)
        step, state, iterator_state = self._start(state)
        if iterator_state is not None:
            train_iter.set_state(iterator_state)
        if step == 0 and cfg.total_steps == 0:
            self.checkpointer.save(0, state, train_iter.get_state())
            say(f"saved the initialisation as checkpoint 0 in {self.workdir}")
            return {"step": 0}
        evaluator = (
            Evaluator(self.model, cfg, self.mesh, shardings["params"], self.workdir)
            if cfg.eval.num_examples
            else None
        )
        self.fewshot = None
        if evaluator is not None and cfg.eval.fewshot.enabled:
            self.fewshot = FewShot(cfg, self.mesh)
            if self.fewshot.skip:
                say(self.fewshot.skip)
                self.fewshot = None
        logger = MetricsLogger(self.workdir, cfg, resume_step=step)
        try:
            summary = {"step": step}
            if evaluator is not None and step and self._eval_due(step) and not logger.has(step, "val"):
                say(f"step {step}: its evaluation is missing from metrics.jsonl; running it now")
                self._evaluate(evaluator, logger, state, step, summary)
            if step >= cfg.total_steps:
                say(f"run already complete at step {step} in {self.workdir}")
                return summary
            return self._loop(train_iter, state, shardings, step, evaluator, logger, summary)
        finally:
            logger.close()

    def _eval_due(self, step: int) -> bool:
        return step % self.cfg.eval_every == 0 or step == self.cfg.total_steps

    def _evaluate(self, evaluator, logger, state, step: int, summary: dict) -> None:
        start = time.time()
        val, pngs = evaluator.run(state["params"], step)
        if not val:
            return
        fewshot = ""
        if self.fewshot is not None:
            fewshot_start = time.time()
            val.update(self.fewshot.run(state["params"]))
            val["fewshot_seconds"] = time.time() - fewshot_start
            fewshot = f", few-shot top-1 {val['fewshot_top1']:.3f}, kNN top-1 {val['knn_top1']:.3f}"
            summary["fewshot_top1"] = val["fewshot_top1"]
            self._keep_if_best(step, state["params"], val["fewshot_top1"])
        logger.write(step, "val", val)
        summary["val_loss"] = val["loss"]
        ref = f", mse_ref {val['mse_ref']:.4f}" if "mse_ref" in val else ""
        say(f"step {step}: validation loss {val['loss']:.4f}{ref}{fewshot} ({time.time() - start:.1f} s)")
        if jax.process_index() == 0:
            pngs.append(os.path.join(self.workdir, "curves.png"))
            name = os.path.basename(os.path.abspath(self.workdir))
            plots.save_training_curves(logger.records, pngs[-1], name)
        for path in pngs:
            logger.write_image(step, os.path.splitext(os.path.basename(path))[0].rsplit("_", 1)[0], path)

    def _keep_if_best(self, step: int, params, value: float) -> None:
        """Keeps these parameters as the run's best (WORKDIR/best, best.json) if few-shot top-1 improved."""
        best = read_best(self.workdir)
        if not np.isfinite(value) or (best is not None and best["value"] >= value and best["step"] != step):
            return
        save_best(self.workdir, step, params, "fewshot_top1", value)

    def _next_batch(self, train_iter, step: int) -> dict:
        try:
            return global_batch(next(train_iter), self.mesh)
        except UserError:
            raise
        except (
            Exception
        ) as e:  # a lost worker process, an unreadable shard: report it and keep the run resumable
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            raise UserError(
                f"the input pipeline failed before step {step + 1} ({reason}); {self._kept()}; re-run the "
                "same command to resume"
            ) from None

    def _kept(self) -> str:
        where = self.checkpointer.directory
        return (
            f"the checkpoint at step {self.last_saved} is kept in {where}"
            if self.last_saved is not None
            else "no checkpoint was saved"
        )

    def _check(self, done_step: int, metrics: dict) -> dict:
        metrics = jax.device_get(metrics)
        if not metrics["finite"]:
            self.checkpointer.wait()
            raise TrainingDiverged(
                f"loss or gradient norm is not finite at step {done_step} (loss={float(metrics['loss'])}, "
                f"grad_norm={float(metrics['grad_norm'])}); {self._kept()}; lower optim.lr or raise "
                "optim.warmup_steps"
            )
        return metrics

    def _loop(self, train_iter, state, shardings, step, evaluator, logger, summary) -> dict:
        cfg = self.cfg
        batch = self._next_batch(train_iter, step)
        say("compiling the training step ...")
        start = time.time()
        train_step = make_train_step(self.model, self.optimizer, self.schedule, cfg, self.mesh, shardings)
        train_step = train_step.lower(state, batch).compile()
        say(f"compiled in {time.time() - start:.1f} s")
        bar = progress(cfg.total_steps, "train", "step", initial=step, enabled=cfg.progress_bar)
        window, window_start, paused, pending, last_val = [], time.time(), 0.0, None, None
        try:
            while True:
                with deferred():  # a Ctrl-C here would lose the donated state and the one being made
                    state, metrics = train_step(state, batch)
                    step += 1
                if pending is not None:
                    window.append(self._check(*pending))
                pending = (step, metrics)
                last = step == cfg.total_steps
                if step % cfg.log_every == 0 or step % cfg.checkpoint_every == 0 or last:
                    window.append(self._check(*pending))
                    pending = None
                if (step % cfg.log_every == 0 or last) and window:
                    seconds = max(time.time() - window_start - paused, 1e-9)
                    row_tokens = len(window) * cfg.batch_size * batch["patches"].shape[1]
                    real_tokens = float(sum(m["real_tokens"] for m in window))
                    images = float(sum(m["images"] for m in window))
                    record = {
                        "loss": float(np.mean([m["loss"] for m in window])),
                        "grad_norm": float(np.mean([m["grad_norm"] for m in window])),
                        "lr": float(window[-1]["lr"]),
                        "images": images / len(window),
                        "pad_fraction": 1.0 - real_tokens / row_tokens,
                        "images_per_sec": images / seconds,
                        "tokens_per_sec": real_tokens / seconds,
                        "padded_tokens_per_sec": row_tokens / seconds,
                    }
                    logger.write(step, "train", record)
                    val = f" val {last_val:.4f}" if last_val is not None else ""
                    if summary.get("fewshot_top1") is not None:
                        val += f" few-shot {summary['fewshot_top1']:.3f}"
                    ips = record["images_per_sec"]
                    bar.update(step, f"loss {record['loss']:.4f}{val} lr {record['lr']:.2e} {ips:.0f} img/s")
                    summary.update(step=step, train_loss=record["loss"])
                    window, window_start, paused = [], time.time(), 0.0
                pause_start = time.time()
                if step % cfg.checkpoint_every == 0 or last:
                    self.checkpointer.save(step, state, train_iter.get_state())
                    self.last_saved = step
                if evaluator is not None and self._eval_due(step):
                    self._evaluate(evaluator, logger, state, step, summary)
                    last_val = summary.get("val_loss")
                paused += time.time() - pause_start
                if last:
                    break
                raise_if_stopped()  # a Ctrl-C whose KeyboardInterrupt Python dropped
                batch = self._next_batch(train_iter, step)
        except KeyboardInterrupt:
            bar.close()
            self._save_on_interrupt(state, train_iter)
            raise Interrupted(
                f"interrupted at step {step}; {self._kept()}; re-run the same command to resume"
            ) from None
        finally:
            bar.close()
        say(f"done: {step} steps in {duration(bar.elapsed)} ({self.workdir})")
        return summary

    def _save_on_interrupt(self, state, train_iter) -> None:
        """Saves the current state if it is newer than the last checkpoint and still alive (signals wait for
        the training step to return; this guards against a step that failed after its state was donated)."""
        try:
            step = int(state["step"])
            if step > (self.last_saved or 0) and not any(x.is_deleted() for x in jax.tree.leaves(state)):
                self.checkpointer.save(step, state, train_iter.get_state())
                self.checkpointer.wait()
                self.last_saved = step
        except (RuntimeError, ValueError):  # a donated or half-updated state: keep the last checkpoint
            pass
