"""Orbax checkpoints of the train state and the data-iterator state; `restore_params` for downstream use.

Layout: WORKDIR/config.json (resolved config) and WORKDIR/checkpoints/<step>/{state,data}. Orbax writes
each step into a temporary directory and renames it when complete, so a save cut off at any moment is
never listed or restored.
"""

import base64
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from naraim.absl_quiet import absl_warnings_silenced
from naraim.errors import UserError

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"


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
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            keep_period=keep_every or None,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)),
            options=options,
            item_names=("state", "data"),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, iterator_state) -> None:
        per_process = gather_across_processes(json.dumps(encode_iterator_state(iterator_state)))
        data = {"processes": [json.loads(s) for s in per_process]}
        self._manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data))
        )

    def restore(self, step: int, abstract_state):
        """Returns (state laid out like `abstract_state` (ShapeDtypeStructs with shardings), this process's
        iterator state)."""
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
                ),
            )
        except (ValueError, KeyError) as e:
            raise UserError(
                f"checkpoint at step {step} does not match this config's model/optimizer "
                f"({str(e).splitlines()[0]}); "
                "use the config it was trained with or a fresh --workdir"
            ) from None
        processes = restored["data"]["processes"]
        if len(processes) != jax.process_count():
            raise UserError(
                f"checkpoint at step {step} was written by {len(processes)} processes, this run has "
                f"{jax.process_count()}; resume with the same number of processes"
            )
        return restored["state"], decode_iterator_state(processes[jax.process_index()])

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def write_config(workdir: str, cfg: ConfigDict) -> None:
    """Writes the resolved config as WORKDIR/config.json (process 0 only)."""
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
            f.write(cfg.to_json_best_effort(indent=2, sort_keys=True))


def read_config(workdir: str) -> ConfigDict:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise UserError(
            f"{path} not found: pass a pre-training workdir or one of its checkpoints/<step> folders"
        )
    with open(path) as f:
        return ConfigDict(json.load(f))


def _locate(path: str) -> tuple[str, int]:
    """(workdir, step) for a workdir (its newest step) or a WORKDIR/checkpoints/<step> folder."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
        manager = ocp.CheckpointManager(os.path.join(path, CHECKPOINT_DIR), item_names=("state", "data"))
        step = manager.latest_step()
        manager.close()
        if step is None:
            raise UserError(
                f"no complete checkpoint in {path}/{CHECKPOINT_DIR}: pre-train first or pass another path"
            )
        return path, step
    parent = os.path.dirname(path)
    if os.path.basename(parent) == CHECKPOINT_DIR and os.path.basename(path).isdigit():
        return os.path.dirname(parent), int(os.path.basename(path))
    raise UserError(f"{path} is neither a pre-training workdir nor a checkpoints/<step> folder")


def restore_params(path: str) -> tuple[dict, ConfigDict, int]:
    """Model params {'backbone': ..., 'head': ...} (numpy), the run's config and the step, from a workdir
    (newest checkpoint) or a WORKDIR/checkpoints/<step> folder. The optimizer state is not read."""
    workdir, step = _locate(path)
    cfg = read_config(workdir)
    item_dir = os.path.join(workdir, CHECKPOINT_DIR, str(step), "state")
    with absl_warnings_silenced():  # orbax warns that the item folder has no step-level metadata
        checkpointer = ocp.PyTreeCheckpointer()
        params_meta = checkpointer.metadata(item_dir).item_metadata.tree["params"]
        restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), params_meta)
        restored = checkpointer.restore(
            item_dir,
            args=ocp.args.PyTreeRestore(
                item={"params": params_meta}, restore_args={"params": restore_args}, partial_restore=True
            ),
        )
    return restored["params"], cfg, step
