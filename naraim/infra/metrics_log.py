"""Metrics sinks: WORKDIR/metrics.jsonl and wandb (disabled / offline into the workdir / online); process 0
only."""

import json
import logging
import os
import uuid

import jax
import numpy as np
from ml_collections import ConfigDict

from naraim.infra.options import Option
from naraim.infra.workdir import atomic_write

METRICS_FILE = "metrics.jsonl"
log = logging.getLogger("naraim")

WANDB_MODES = ("disabled", "offline", "online")
WANDB_OPTIONS = {
    "mode": Option("offline", "'disabled' | 'offline' (into WORKDIR/wandb) | 'online'"),
    "project": Option("naraim", "wandb project"),
    "name": Option("", "'' -> workdir basename"),
}


def _plain(value):
    if isinstance(value, np.generic | jax.Array | np.ndarray):
        return np.asarray(value).item()
    return value


class MetricsLogger:
    """write(step, split, metrics) appends {'step', 'split', **metrics} to metrics.jsonl and logs to wandb as
    '<split>/<name>'; write_image(step, name, path) logs a PNG to wandb. Processes other than 0 do nothing.

    resume_step: records after this step (written by a run killed after its last checkpoint) are dropped, so
    the file holds each step once; the file is rewritten atomically (a kill keeps the old or the new file).
    Lines that do not decode (a partial last line, stray bytes) are dropped with a warning.
    """

    def __init__(self, workdir: str, cfg: ConfigDict, resume_step: int = 0):
        self._active = jax.process_index() == 0
        self._wandb = None
        self.records = []
        if not self._active:
            return
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, METRICS_FILE)
        self.records: list[dict] = []
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
            bad = 0
            for line in lines:
                record = _record(line)
                if record is None:
                    bad += 1
                elif record["step"] <= resume_step:
                    self.records.append(record)
            if bad:
                log.warning("%s: dropped %d line(s) that are not complete JSON records", path, bad)
            if bad or len(self.records) != len(lines):
                atomic_write(path, "".join(json.dumps(r) + "\n" for r in self.records))
        self._file = open(path, "a", encoding="utf-8")
        if cfg.wandb.mode != "disabled":
            import wandb  # heavy to import: only for runs that log to wandb

            self._wandb = wandb.init(
                project=cfg.wandb.project,
                name=cfg.wandb.name or os.path.basename(os.path.abspath(workdir)),
                dir=workdir,
                mode=cfg.wandb.mode,
                config=cfg.to_dict(),
                resume="allow",
                id=_run_id(workdir),
            )

    def has(self, step: int, split: str) -> bool:
        """Whether the file holds a record of `split` at `step` (kept from before or written since)."""
        return any(r["step"] == step and r.get("split") == split for r in self.records)

    def write(self, step: int, split: str, metrics: dict) -> None:
        if not self._active:
            return
        record = {"step": int(step), "split": split, **{k: _plain(v) for k, v in metrics.items()}}
        self.records.append(record)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log(
                {f"{split}/{k}": v for k, v in record.items() if k not in ("step", "split")}, step=step
            )

    def write_image(self, step: int, name: str, path: str) -> None:
        if self._wandb is not None:
            import wandb  # heavy to import: only for runs that log to wandb

            self._wandb.log({name: wandb.Image(path)}, step=step)

    def close(self) -> None:
        if not self._active:
            return
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()


def _record(line: str) -> dict | None:
    """The JSON object of one metrics line with an integer 'step', else None."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


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
