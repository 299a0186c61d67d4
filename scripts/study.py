"""A real-data study: NARAIM and AIM pre-training against a random-init control, each probed by an attentive
sweep, kNN and a linear sweep, on every seed; writes DIR/study.json and DIR/report.md (docs/study.md).

  python scripts/study.py --data folder:../shared/datasets/clothing-small --workdir runs/study
      [--budget_minutes 45] [--seeds 1,2] [--steps N] [--set model.variant=Ti6/16 ...] [--probe_set ...]

--data: any data.source (folder:PATH, tfds:NAME, arrayrecord:GLOB, synthetic); folders and TFDS datasets are
first written as pre-resized ArrayRecord shards into DIR/data. --budget_minutes sizes the pre-training (a
measured step time decides the steps, recorded in DIR/plan.json); --steps fixes them. Re-running the same
command skips every finished arm and probe.
"""

import os
import shlex
import sys

from naraim.cli import ArgumentParser, run_main
from naraim.errors import UserError
from naraim.study.run import Study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data.source of the study's images")
    parser.add_argument("--workdir", required=True, help="the study's folder")
    parser.add_argument(
        "--budget_minutes", type=float, default=45.0, help="wall-clock budget that sizes the pre-training"
    )
    parser.add_argument(
        "--seeds", default="1,2", help="comma-separated seeds (pre-training, probes, minival)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="pre-training steps per arm (default: from the budget)"
    )
    parser.add_argument(
        "--recipe", default=os.path.join(ROOT, "configs", "small.py"), help="pre-training config file"
    )
    parser.add_argument(
        "--probe_config", default=os.path.join(ROOT, "configs", "probe.py"), help="probe config file"
    )
    parser.add_argument(
        "--set", action="append", default=[], help="KEY=VALUE override of the pre-training configs"
    )
    parser.add_argument(
        "--probe_set", action="append", default=[], help="KEY=VALUE override of the probe configs"
    )
    parser.add_argument(
        "--native",
        action="store_true",
        help="add the recipe's naraim_native arm (budgets, packed rows); every arm probed at its budgets",
    )
    args = parser.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        raise UserError(f"--seeds={args.seeds!r} must be comma-separated integers, e.g. 1,2") from None
    if not seeds or args.budget_minutes <= 0 or (args.steps is not None and args.steps < 1):
        raise UserError("--seeds needs at least one seed, --budget_minutes must be > 0 and --steps >= 1")
    study = Study(
        args.data,
        args.workdir,
        seeds,
        args.budget_minutes,
        args.steps,
        args.recipe,
        args.set,
        args.probe_set,
        args.probe_config,
        args.native,
    )
    study.run([shlex.join(["python", "scripts/study.py", *sys.argv[1:]])])


if __name__ == "__main__":
    run_main(main)
