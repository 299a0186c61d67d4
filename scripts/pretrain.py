"""Pre-train a ViT by next-patch prediction.

  python scripts/pretrain.py --config configs/naraim_b14.py[:variant] --workdir runs/x [--config.a.b=v ...]

Re-running the same command resumes from the newest checkpoint in --workdir. On several hosts, start one
process per host with --distributed (plus --coordinator, --num_processes, --process_id where the cluster
does not provide them).
"""

import json
import sys

import jax
from absl import flags

from naraim.cli import run_main
from naraim.errors import UserError
from naraim.infra.flags import define_config_flag, parse_flags
from naraim.train.config import default_pretrain_config
from naraim.train.trainer import train

_CONFIG = define_config_flag()
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "directory for config.json, metrics.jsonl, checkpoints and plots"
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "call jax.distributed.initialize (one process per host)"
)
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0 (with --distributed)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes (with --distributed)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index (with --distributed)")
_FORCE = flags.DEFINE_bool(
    "force_config_change",
    False,
    "resume although keys that shape the run changed (recorded in WORKDIR/config_history.jsonl)",
)


def main() -> None:
    cfg = parse_flags(sys.argv, _CONFIG, default_pretrain_config)
    if not _WORKDIR.value:
        raise UserError("--workdir is required: pass --workdir=runs/<name>")
    if _DISTRIBUTED.value:
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    summary = train(cfg, _WORKDIR.value, force_config_change=_FORCE.value)
    if jax.process_index() == 0:
        print(json.dumps(summary))


if __name__ == "__main__":
    run_main(main)
