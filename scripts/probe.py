"""Probe or fine-tune a pre-trained backbone and report accuracy overall and per aspect-ratio bin.

  python scripts/probe.py --config configs/probe.py[:variants] --workdir runs/p --config.init_from=runs/x

The backbone's architecture and data recipe come from the pre-training run's config.json. Writes
config.json, metrics.jsonl, results.json and accuracy_by_aspect_ratio.png into --workdir.
"""

import json
import sys

import jax
from absl import flags

from naraim.cli import run_main
from naraim.errors import UserError
from naraim.train.flags import define_config_flag, parse_flags

_CONFIG = define_config_flag()
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "directory for config.json, metrics.jsonl, results.json, plots"
)


def main() -> None:
    cfg = parse_flags(sys.argv, _CONFIG)
    if not _WORKDIR.value:
        raise UserError("--workdir is required: pass --workdir=runs/<name>")
    from naraim.probe.runner import run_probe

    results = run_probe(cfg, _WORKDIR.value)
    if jax.process_index() == 0:
        print(json.dumps({k: results[k] for k in ("top1", "top5", "num_examples")}))


if __name__ == "__main__":
    run_main(main)
