"""Probe or fine-tune a pre-trained backbone and report accuracy overall and per aspect-ratio bin.

  python scripts/probe.py --config configs/probe.py[:variants] --workdir runs/p --config.init_from=runs/x

The backbone's architecture and data recipe come from the pre-training run's config.json. Writes
config.json, metrics.jsonl, results.json and accuracy_by_aspect_ratio.png into --workdir.
"""

import json
import os
import sys

import jax
from absl import flags

from naraim.cli import run_main
from naraim.errors import UserError
from naraim.infra.flags import define_config_flag, load_config_file, parse_flags
from naraim.model.config import default_model_config
from naraim.probe.runner import run_probe

_CONFIG = define_config_flag()
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "directory for config.json, metrics.jsonl, checkpoints, results.json, plots"
)
_FORCE = flags.DEFINE_bool(
    "force_config_change",
    False,
    "resume although keys that shape the probe changed (recorded in WORKDIR/config_history.jsonl)",
)
DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "probe.py"
)


def main() -> None:
    cfg = parse_flags(
        sys.argv,
        _CONFIG,
        lambda: load_config_file(DEFAULT_CONFIG),
        locked_sections={"model": list(default_model_config())},
    )
    if not _WORKDIR.value:
        raise UserError("--workdir is required: pass --workdir=runs/<name>")
    results = run_probe(cfg, _WORKDIR.value, force_config_change=_FORCE.value)
    if jax.process_index() == 0:
        print(json.dumps({k: results[k] for k in ("top1", "top5", "num_examples")}))


if __name__ == "__main__":
    run_main(main)
