"""Metrics sinks: WORKDIR/metrics.jsonl and wandb (disabled / offline into the workdir / online); process 0
only."""

import json
import os
import uuid

import jax
import numpy as np
from ml_collections import ConfigDict

METRICS_FILE = "metrics.jsonl"


def _plain(value):
    if isinstance(value, np.generic | jax.Array | np.ndarray):
        return np.asarray(value).item()
    return value


class MetricsLogger:
    """write(step, split, metrics) appends {'step', 'split', **metrics} to metrics.jsonl and logs to wandb as
    '<split>/<name>'; write_image(step, name, path) logs a PNG to wandb. Processes other than 0 do nothing.

    resume_step: records after this step (written by a run killed after its last checkpoint) are dropped, so
    the file holds each step once.
    """

    def __init__(self, workdir: str, cfg: ConfigDict, resume_step: int = 0):
        self._active = jax.process_index() == 0
        self._wandb = None
        if not self._active:
            return
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, METRICS_FILE)
        if os.path.exists(path):
            with open(path) as f:
                kept = [line for line in f if _complete_record_upto(line, resume_step)]
            with open(path, "w") as f:
                f.writelines(kept)
        self._file = open(path, "a")
        if cfg.wandb.mode != "disabled":
            import wandb

            self._wandb = wandb.init(
                project=cfg.wandb.project,
                name=cfg.wandb.name or os.path.basename(os.path.abspath(workdir)),
                dir=workdir,
                mode=cfg.wandb.mode,
                config=cfg.to_dict(),
                resume="allow",
                id=_run_id(workdir),
            )

    def write(self, step: int, split: str, metrics: dict) -> None:
        if not self._active:
            return
        record = {"step": int(step), "split": split, **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log(
                {f"{split}/{k}": v for k, v in record.items() if k not in ("step", "split")}, step=step
            )

    def write_image(self, step: int, name: str, path: str) -> None:
        if self._wandb is not None:
            import wandb

            self._wandb.log({name: wandb.Image(path)}, step=step)

    def close(self) -> None:
        if not self._active:
            return
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()


def _complete_record_upto(line: str, step: int) -> bool:
    try:
        return json.loads(line)["step"] <= step
    except (json.JSONDecodeError, KeyError, TypeError):
        return False


def _run_id(workdir: str) -> str:
    """A wandb run id stored in the workdir, so a resumed run continues the same wandb run."""
    path = os.path.join(workdir, "wandb_run_id")
    if os.path.exists(path):
        with open(path) as f:
            run_id = f.read().strip()
        if run_id:
            return run_id
    run_id = uuid.uuid4().hex[:12]
    with open(path, "w") as f:
        f.write(run_id)
    return run_id
