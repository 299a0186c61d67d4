"""Orbax checkpoints of the train state and the data-iterator state; `restore_params` for downstream use.

Layout: WORKDIR/config.json (resolved config) and WORKDIR/checkpoints/<step>/{state,data}. Orbax writes
each step into a temporary directory and renames it when complete, so a save cut off at any moment is
never listed or restored.
"""

import asyncio
import base64
import contextlib
import errno
import json
import os
import shutil
import sys
import warnings
from collections.abc import Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from naraim.absl_quiet import absl_warnings_silenced
from naraim.errors import UserError
from naraim.infra.workdir import CONFIG_FILE, atomic_write, read_json

CHECKPOINT_DIR = "checkpoints"
BEST_DIR, BEST_FILE = "best", "best.json"  # the parameters of the best evaluation so far, and its step


class _DrainingEventLoop(asyncio.SelectorEventLoop):
    """An event loop that runs the tasks still pending on it to their end before it closes, and that does not
    log the exceptions of its tasks that nothing awaited: the reads orbax abandoned when another one failed,
    whose failure the restore itself raises."""

    def call_exception_handler(self, context: dict) -> None:
        if context.get("message") != "Task exception was never retrieved":
            super().call_exception_handler(context)

    def close(self) -> None:
        if not self.is_closed() and not self.is_running():
            pending = asyncio.all_tasks(self)
            if pending:
                self.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        super().close()


@contextlib.contextmanager
def _reads_drained() -> Iterator[None]:
    """orbax restores in a fresh event loop that it closes as soon as one read fails, while the checkpoint's
    other reads are still in flight; their completions then meet a closed loop and print hundreds of
    'Event loop is closed' tracebacks and unawaited-coroutine warnings, and those that ended before it closed
    print 'Task exception was never retrieved' when collected. Within this block new event loops finish their
    pending reads before closing and do not log the errors of reads nothing awaited, so a damaged checkpoint
    fails quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the policy API is deprecated from Python 3.14
        previous = asyncio.get_event_loop_policy()
        policy = asyncio.DefaultEventLoopPolicy()
        policy.new_event_loop = _DrainingEventLoop
        asyncio.set_event_loop_policy(policy)
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(previous)


def _root_cause(e: BaseException) -> str:
    """'Type: first line' of the innermost exception that `e` was raised from (tensorstore's own error, not
    orbax's wrapper), at most 200 characters."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]


def encode_iterator_state(state) -> dict:
    """An iterator's get_state() (bytes or a JSON-able dict) as a JSON-able dict."""
    if isinstance(state, bytes | bytearray):
        return {"bytes_b64": base64.b64encode(bytes(state)).decode("ascii")}
    return {"dict": state}


def decode_iterator_state(encoded: dict):
    if "bytes_b64" in encoded:
        return base64.b64decode(encoded["bytes_b64"])
    return encoded["dict"]


def abstract_like(state):
    """ShapeDtypeStructs (with the arrays' shardings) of a pytree of jax.Arrays: what restore() lays out."""
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )


def gather_across_processes(text: str) -> list[str]:
    """Every process's string, in process order (a collective: all processes must call it)."""
    if jax.process_count() == 1:
        return [text]
    data = np.frombuffer(text.encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int32))).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return [bytes(rows[i, : lengths[i]]).decode() for i in range(len(lengths))]


class Checkpointer:
    """Saves/restores {'state': train-state pytree, 'data': per-process iterator states} under
    WORKDIR/checkpoints.

    keep: the last `keep` checkpoints are kept, plus every step divisible by `keep_every` (0 = none).
    Saves are asynchronous; `wait()` blocks until the last one is committed.
    """

    def __init__(self, workdir: str, keep: int = 3, keep_every: int = 0, async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            keep_period=keep_every or None,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = self._open()
        self._saving: int | None = None  # the step of the save that may still be in flight

    def _open(self) -> ocp.CheckpointManager:
        try:
            return ocp.CheckpointManager(self.directory, options=self._options, item_names=("state", "data"))
        except OSError as e:
            raise UserError(
                f"cannot create {self.directory} ({e.strerror or e}); pick a writable --workdir"
            ) from None

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def _failed(self, e: Exception, step: int | None) -> UserError:
        reason = (
            "no space left on the device"
            if getattr(e, "errno", None) == errno.ENOSPC
            else str(e).splitlines()[0]
        )
        intact = [s for s in self.all_steps() if s != step]
        kept = f"the newest intact checkpoint is step {intact[-1]}" if intact else "no checkpoint is intact"
        return UserError(
            f"saving the checkpoint of step {step} to {self.directory} failed ({type(e).__name__}: "
            f"{reason}); {kept}; free space or fix the folder, then re-run the same command to resume"
        )

    def save(self, step: int, state, iterator_state) -> None:
        """Starts an (asynchronous) save of step `step`; UserError in one line if this or the previous save
        failed (a full disk, a folder that became unwritable)."""
        per_process = gather_across_processes(json.dumps(encode_iterator_state(iterator_state)))
        data = {"processes": [json.loads(s) for s in per_process]}
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data)),
            )
        except Exception as e:  # orbax surfaces the previous async save's error here too
            raise self._failed(e, self._saving if self._saving is not None else step) from None
        self._saving = step

    def restore_newest_intact(self, abstract_state, log=None):
        """(step, state, iterator state) of the newest checkpoint that restores, or None without checkpoints.

        A checkpoint that fails to restore (truncated or missing array files, a damaged manifest) is moved to
        WORKDIR/checkpoints_damaged/<step> and named in one line to `log` (default stderr); the next older one
        is tried. UserError when none restores.
        """
        log = log or (lambda line: print(line, file=sys.stderr))
        errors = []
        for step in reversed(self.all_steps()):
            try:
                state, iterator_state = self.restore(step, abstract_state)
                return step, state, iterator_state
            except UserError:
                raise
            except Exception as e:  # anything a damaged checkpoint makes orbax or tensorstore raise
                errors.append((step, _root_cause(e)))
                self._set_aside(step)
                log(f"checkpoint at step {step} is damaged ({errors[-1][1]}); moved to checkpoints_damaged/")
        if errors:
            raise UserError(
                f"no checkpoint in {self.directory} could be restored (step {errors[0][0]}: "
                f"{errors[0][1]}); they were moved to checkpoints_damaged/: re-run to start afresh, or "
                "use the config they were written with"
            )
        return None

    def _set_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            damaged = os.path.join(os.path.dirname(self.directory), "checkpoints_damaged")
            os.makedirs(damaged, exist_ok=True)
            target = os.path.join(damaged, str(step))
            if os.path.exists(target):
                shutil.rmtree(target)
            shutil.move(os.path.join(self.directory, str(step)), target)
        multihost_utils.sync_global_devices(f"set_aside_{step}")
        self._manager.close()
        self._manager = self._open()

    def restore(self, step: int, abstract_state):
        """Returns (state laid out like `abstract_state` (ShapeDtypeStructs with shardings), this process's
        iterator state)."""
        with absl_warnings_silenced(), _reads_drained():
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
                ),
            )
        processes = restored["data"]["processes"]
        if len(processes) != jax.process_count():
            raise UserError(
                f"checkpoint at step {step} was written by {len(processes)} processes, this run has "
                f"{jax.process_count()}; resume with the same number of processes"
            )
        return restored["state"], decode_iterator_state(processes[jax.process_index()])

    def wait(self) -> None:
        """Blocks until the last save is committed; UserError in one line if it failed."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise self._failed(e, self._saving) from None
        self._saving = None

    def close(self) -> None:
        self._manager.close()


def write_config(workdir: str, cfg: ConfigDict) -> None:
    """Writes the resolved config as WORKDIR/config.json, atomically (process 0 only)."""
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        atomic_write(os.path.join(workdir, CONFIG_FILE), cfg.to_json_best_effort(indent=2, sort_keys=True))


def read_config(workdir: str) -> ConfigDict:
    """The run's config.json; UserError in one line if it is missing or damaged."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise UserError(
            f"{path} not found: pass a pre-training workdir or one of its checkpoints/<step> folders"
        )
    return ConfigDict(read_json(path, "the pre-training run's config"))


def _steps(checkpoint_dir: str) -> list[int]:
    """Steps with a complete checkpoint (orbax writes into a temporary folder and renames it when done)."""
    with os.scandir(checkpoint_dir) as entries:
        return sorted(int(e.name) for e in entries if e.name.isdigit() and e.is_dir())


def read_best(workdir: str) -> dict | None:
    """WORKDIR/best.json ({'step', 'metric', 'value'}) or None when the run has no best yet."""
    path = os.path.join(workdir, BEST_FILE)
    return read_json(path, "the best-checkpoint record") if os.path.exists(path) else None


def write_params(checkpoint_dir: str, step: int, params) -> None:
    """CHECKPOINT_DIR/<step>/state holding {'params': params}: what restore_params reads (an imported run,
    the best evaluation)."""
    path = os.path.abspath(os.path.join(checkpoint_dir, str(step), "state"))  # orbax needs absolute paths
    with absl_warnings_silenced():
        ocp.PyTreeCheckpointer().save(path, {"params": params})


def save_best(workdir: str, step: int, params, metric: str, value: float) -> None:
    """Keeps `params` as the run's best (WORKDIR/best/<step>, replacing the previous best) and records
    {'step', 'metric', 'value'} in WORKDIR/best.json; every process calls it."""
    final = os.path.join(workdir, BEST_DIR)
    staging = final + ".new"
    if jax.process_index() == 0 and os.path.exists(staging):
        shutil.rmtree(staging)
    multihost_utils.sync_global_devices("naraim_best_staging")
    write_params(staging, step, params)
    multihost_utils.sync_global_devices("naraim_best_saved")
    if jax.process_index() == 0:
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(staging, final)
        record = {"step": int(step), "metric": metric, "value": float(value)}
        atomic_write(os.path.join(workdir, BEST_FILE), json.dumps(record) + "\n")


def _locate(path: str) -> tuple[str, int | None]:
    """(workdir, step) for a workdir (step None: its newest) or a WORKDIR/checkpoints/<step> folder."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if os.path.basename(parent) == CHECKPOINT_DIR and os.path.basename(path).isdigit():
        return os.path.dirname(parent), int(os.path.basename(path))
    if not os.path.exists(path):
        raise UserError(
            f"init_from {path} does not exist: pass a pre-training workdir or a checkpoints/<step> folder"
        )
    if os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
        return path, None
    raise UserError(f"{path} is neither a pre-training workdir nor a checkpoints/<step> folder")


def restore_params(path: str) -> tuple[dict, ConfigDict, int]:
    """Model params {'backbone': ..., 'head': ...} (numpy), the run's config and the step, from a workdir
    (newest checkpoint), a WORKDIR/checkpoints/<step> folder or WORKDIR:best (the best evaluation's
    parameters, best.json). The optimizer state is not read.

    A run that is still training may delete its oldest checkpoint while it is read: the newest one is then
    tried again (up to 3 times)."""
    if path.endswith(":best"):
        workdir = _locate(path[: -len(":best")])[0]
        best = read_best(workdir)
        if best is None:
            raise UserError(
                f"{workdir} has no best checkpoint yet (best.json): it is written at evaluations with "
                "eval.fewshot.enabled; pass the workdir itself for its newest checkpoint"
            )
        step = int(best["step"])
        return _restore_params(os.path.join(workdir, BEST_DIR), step), read_config(workdir), step
    workdir, step = _locate(path)
    cfg = read_config(workdir)
    checkpoint_dir = os.path.join(workdir, CHECKPOINT_DIR)
    if step is not None:
        if step not in _steps(checkpoint_dir):
            found = ", ".join(map(str, _steps(checkpoint_dir))) or "none yet"
            raise UserError(f"no checkpoint at step {step} in {checkpoint_dir} (its steps: {found})")
        return _restore_params(checkpoint_dir, step), cfg, step
    for attempt in range(3):
        steps = _steps(checkpoint_dir)
        if not steps:
            raise UserError(
                f"no complete checkpoint in {checkpoint_dir} yet: pre-train first, or wait for its first save"
            )
        try:
            return _restore_params(checkpoint_dir, steps[-1]), cfg, steps[-1]
        except UserError:
            if attempt == 2 or steps[-1] in _steps(checkpoint_dir):
                raise  # retried only if the step vanished under the read (the run deleted it)
    raise AssertionError("unreachable")


def _restore_params(checkpoint_dir: str, step: int) -> dict:
    """The params of checkpoint `step` as numpy arrays; UserError in one line if it does not restore."""
    try:
        return _read_params(checkpoint_dir, step)
    except Exception as e:  # anything a damaged (or vanished) checkpoint makes orbax or tensorstore raise
        raise UserError(
            f"checkpoint {os.path.join(checkpoint_dir, str(step))} does not restore ({_root_cause(e)}); pass "
            "another step as init_from=WORKDIR/checkpoints/<step>"
        ) from None


def _read_params(checkpoint_dir: str, step: int) -> dict:
    item_dir = os.path.join(checkpoint_dir, str(step), "state")
    with absl_warnings_silenced(), _reads_drained():  # orbax warns that the folder has no step metadata
        checkpointer = ocp.PyTreeCheckpointer()
        params_meta = checkpointer.metadata(item_dir).item_metadata.tree["params"]
        restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), params_meta)
        restored = checkpointer.restore(
            item_dir,
            args=ocp.args.PyTreeRestore(
                item={"params": params_meta}, restore_args={"params": restore_args}, partial_restore=True
            ),
        )
    return restored["params"]
