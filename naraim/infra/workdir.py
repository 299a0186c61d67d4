"""A run's working directory: one run at a time (a lock), a config that cannot silently change on resume,
and files written atomically.

- WorkdirLock: an flock on WORKDIR/.lock, held for the run and released by the kernel when the process
  dies (so a SIGKILLed run's lock is never stale); the file names the holder for the error message.
- check_resume_config: compares the new resolved config with WORKDIR/config.json. Keys that cannot change
  without mixing two runs end the run with one line listing each difference; the keys a researcher may
  change mid-run (MUTABLE_KEYS) are allowed, and every change is appended to WORKDIR/config_history.jsonl.
- atomic_write: temp file + rename, so a kill leaves the old file or the new one, never half of one.
"""

import datetime
import errno
import fcntl
import json
import os
import socket
import tempfile
from collections.abc import Iterable

import jax
from ml_collections import ConfigDict

from naraim.errors import UserError

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"
# Keys that may change when a run is resumed: how long it runs, how often it logs, evaluates and saves, where
# it reports. Everything else (model, data, batch, seed, workers, optimiser, ...) shapes the checkpoint or
# the data order.
MUTABLE_KEYS = (
    "total_steps",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
    "keep_every",
    "progress_bar",
    "wandb.",
    "eval.num_images",
    "eval.error_map_bins",
    "data.prefetch_batches",
    "data.read_threads",
    "model.remat",
    "model.attention_impl",
)


def atomic_write(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file in the same folder and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def ensure_writable(workdir: str) -> None:
    """Creates `workdir` and checks that files can be written there; UserError in one line otherwise."""
    try:
        os.makedirs(workdir, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=workdir, prefix=".write_test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = "no space left on the device" if e.errno == errno.ENOSPC else e.strerror or str(e)
        raise UserError(f"cannot write to --workdir {workdir!r} ({reason}); pick a writable folder") from None


class WorkdirLock:
    """Context manager: an exclusive lock on WORKDIR (process 0 of a run takes it). A second run on the same
    workdir ends with one line naming the process that holds it."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self._fd: int | None = None

    def __enter__(self) -> "WorkdirLock":
        if jax.process_index() != 0:
            return self
        ensure_writable(self.workdir)
        path = os.path.join(self.workdir, LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise UserError(
                f"--workdir {self.workdir!r} is in use by {holder}; wait for that run to end or use another "
                "--workdir"
            ) from None
        os.ftruncate(fd, 0)
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()} (since {started})".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def read_json(path: str, what: str) -> dict:
    """The JSON object in `path`; UserError in one line if it is unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(
            f"{path} ({what}) is damaged or unreadable ({type(e).__name__}: {str(e).splitlines()[0]}); "
            "restore it or start afresh in another --workdir"
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"{path} ({what}) does not hold a JSON object; restore it or use another --workdir")
    return data


def _flatten(tree, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def _mutable(key: str, mutable: Iterable[str]) -> bool:
    return any(key == m or (m.endswith(".") and key.startswith(m)) for m in mutable)


def config_changes(saved: dict, new: dict) -> dict[str, tuple]:
    """{key: (saved value, new value)} of the flattened keys whose values differ (missing = None)."""
    a, b = _flatten(saved), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_resume_config(
    workdir: str,
    cfg: ConfigDict,
    step: int,
    mutable: Iterable[str] = MUTABLE_KEYS,
    force: bool = False,
) -> list[str]:
    """Compares `cfg` with the run's saved WORKDIR/config.json before resuming at `step`.

    Changes of keys outside `mutable` raise UserError listing each (old -> new), unless `force`; keys the
    saved config does not have (added by a newer naraim) are allowed. Allowed (or forced) changes are
    appended to config_history.jsonl with the step, and config.json is rewritten with the new config.
    Returns the changed keys.
    """
    saved = read_json(os.path.join(workdir, CONFIG_FILE), "the run's config")
    new = json.loads(cfg.to_json_best_effort())
    changes = config_changes(saved, new)
    known = _flatten(saved)  # a key the saved config lacks was added by a newer naraim: allowed, recorded
    fixed = {k: v for k, v in changes.items() if k in known and not _mutable(k, mutable)}
    if fixed and not force:
        listed = "; ".join(f"{k}: {old!r} -> {new_!r}" for k, (old, new_) in fixed.items())
        raise UserError(
            f"--workdir {workdir!r} holds a run with another config ({listed}); resume with the same values, "
            "use a fresh --workdir, or pass --force_config_change to record the change and continue"
        )
    if changes and jax.process_index() == 0:
        record = {
            "step": step,
            "time": datetime.datetime.now().isoformat(timespec="seconds"),
            "forced": bool(fixed),
            "changes": {k: {"old": old, "new": new_} for k, (old, new_) in changes.items()},
        }
        with open(os.path.join(workdir, HISTORY_FILE), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        atomic_write(os.path.join(workdir, CONFIG_FILE), cfg.to_json_best_effort(indent=2, sort_keys=True))
    return sorted(changes)
