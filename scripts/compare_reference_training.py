"""Pre-train the NARAIM reference code and naraim side by side on the same images, and compare their curves.

  python scripts/compare_reference_training.py --reference_repo ../naraim-ref \
      --reference_python ../refenv/bin/python --data ../shared/datasets/clothing-small --steps 300

The reference runs in its own environment (--reference_python: tensorflow-cpu, jax, flax, optax, einops; see
scripts/record_reference.py) at the commit whose loss trained its paper's models (before f8d1e65; its newest
trainer divides by zero), on TFRecords its own tfrecords.py writes from --data (every image re-encoded as a
quality-95 JPEG); naraim reads those same re-encoded JPEGs. Both train configs/naraim_b14.py's recipe
(native aspect ratio and flip, S = 224, P = 14, 256 tokens, normalised pixels, AdamW 1e-3 / 0.98 / 0.01,
clipping 1, the exponential schedule with warmup and cooldown) shrunk to the same CPU-sized ViT (Mi4/14:
width 128, 4 blocks, 4 heads) and batch, float32, one seed per run for both initialisation and data order.
Both validate on the first whole batches of the validation split with the reference's protocol: a random
prefix per image, the masked errors over images x 255 slots (its pre-f8d1e65 formula; naraim's
mse_ref_fixed_count). Writes OUT/compare.json (every curve, the commands, both commits) and OUT/compare.png.
Finished runs are kept: re-running the command only redoes what is missing.
"""

import json
import os
import subprocess
import sys
import time

import matplotlib
import numpy as np

from naraim.cli import ArgumentParser, run_main
from naraim.errors import UserError
from naraim.infra.flags import load_config_file
from naraim.train.trainer import train

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = os.path.join(ROOT, "scripts", "record_reference.py")
WIDTH, DEPTH, HEADS = 128, 4, 4  # Mi4/14


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.strip()


def reference_data(args) -> str:
    """OUT/data: the reference's TFRecords of --data and the same JPEGs as an image folder (made once)."""
    out = os.path.join(args.out, "data")
    if not os.path.isdir(os.path.join(out, "tfrecords")):
        cmd = [args.reference_python, RECORD, "tfrecords", "--repo", args.reference_repo, "--data", args.data]
        _run(cmd + ["--out", out], "writing the reference's TFRecords")
    return out


def _run(cmd: list[str], what: str) -> None:
    print(f"{what}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        tail = " | ".join(line for line in proc.stderr.strip().splitlines()[-3:])
        raise UserError(f"{what} failed (exit {proc.returncode}): {tail}")


def reference_run(args, data: str, seed: int) -> dict:
    path = os.path.join(args.out, f"reference_s{seed}.json")
    if not os.path.exists(path):
        schedule = ["--warmup", str(args.warmup), "--cooldown", str(args.cooldown)]
        cmd = [args.reference_python, RECORD, "train", "--repo", args.reference_repo]
        cmd += ["--tfrecords", os.path.join(data, "tfrecords"), "--out", path, "--seed", str(seed)]
        cmd += ["--steps", str(args.steps), "--batch_size", str(args.batch_size), *schedule]
        cmd += ["--width", str(WIDTH), "--depth", str(DEPTH), "--heads", str(HEADS)]
        cmd += ["--log_every", str(args.log_every), "--eval_every", str(args.eval_every)]
        start = time.time()
        _run(cmd, f"the reference, seed {seed}")
        with open(path) as f:
            result = json.load(f)
        result["seconds"] = time.time() - start
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
    with open(path) as f:
        return json.load(f)


def naraim_config(args, data: str, seed: int):
    """configs/naraim_b14.py shrunk to the reference run's size, batch, schedule and validation images."""
    cfg = load_config_file(os.path.join(ROOT, "configs", "naraim_b14.py"))
    validation = sum(len(files) for _, _, files in os.walk(os.path.join(data, "images", "validation")))
    cfg.update(
        seed=seed,
        total_steps=args.steps,
        batch_size=args.batch_size,
        log_every=args.log_every,
        eval_every=args.eval_every,
        checkpoint_every=args.steps,
        keep_every=0,
        progress_bar=False,
    )
    cfg.model.update(variant="Mi4/14", dtype="float32")
    cfg.data.update(source=f"folder:{os.path.join(data, 'images')}", num_workers=0)
    cfg.optim.update(warmup_steps=args.warmup, cooldown_steps=args.cooldown)
    # the reference drops the last partial validation batch
    cfg.eval.update(num_examples=validation // args.batch_size * args.batch_size, batch_size=args.batch_size)
    cfg.eval.num_images = 0
    cfg.wandb.mode = "disabled"
    return cfg


def naraim_run(args, data: str, seed: int) -> dict:
    workdir = os.path.join(args.out, f"naraim_s{seed}")
    start = time.time()
    train(naraim_config(args, data, seed), workdir)
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {
        "train_loss": [(r["step"], r["loss"]) for r in rows if r["split"] == "train" and "loss" in r],
        "val_loss": [(r["step"], r["mse_ref_fixed_count"]) for r in rows if r["split"] == "val"],
        "seconds": time.time() - start,
    }


def agreement(runs: dict[str, dict[int, dict]], key: str) -> list[dict]:
    """Per logged step: each code's mean over seeds and spread (max - min), and the gap between the means."""
    rows = []
    steps = sorted({s for run in runs["reference"].values() for s, _ in run[key]})
    for step in steps:
        values = {code: [dict(run[key]).get(step) for run in seeds.values()] for code, seeds in runs.items()}
        if any(v is None for vs in values.values() for v in vs):
            continue
        row = {"step": step}
        for code, vs in values.items():
            row[f"{code}_mean"], row[f"{code}_spread"] = float(np.mean(vs)), float(np.ptp(vs))
        row["gap"] = row["naraim_mean"] - row["reference_mean"]
        rows.append(row)
    return rows


def plot(runs: dict, path: str, title: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in zip(
        axes,
        ("train_loss", "val_loss"),
        ("training loss", "validation MSE (the reference's formula)"),
        strict=True,
    ):
        for code, color in (("reference", "tab:blue"), ("naraim", "tab:orange")):
            for seed, run in runs[code].items():
                steps, values = zip(*run[key], strict=True)
                ax.plot(
                    steps,
                    values,
                    color=color,
                    alpha=0.8,
                    marker="o" if key == "val_loss" else None,
                    markersize=3,
                    label=f"{code}, seed {seed}",
                )
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reference_repo", required=True, help="a git checkout of github.com/daniel-gallo/naraim"
    )
    parser.add_argument("--reference_python", required=True, help="python of the reference's environment")
    parser.add_argument("--data", required=True, help="an image folder with train/ and validation/ (JPEGs)")
    parser.add_argument("--out", default="runs/compare_reference", help="output folder (runs are kept)")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps of every run")
    parser.add_argument("--seeds", default="1,2", help="comma-separated seeds, one run per code and seed")
    parser.add_argument("--batch_size", type=int, default=16, help="batch of both codes")
    parser.add_argument("--warmup", type=int, default=30, help="warmup steps of both codes' schedule")
    parser.add_argument("--cooldown", type=int, default=60, help="cooldown steps of both codes' schedule")
    parser.add_argument("--log_every", type=int, default=10, help="steps per logged training loss")
    parser.add_argument("--eval_every", type=int, default=50, help="steps between validations")
    args = parser.parse_args()
    for path in (args.reference_repo, args.reference_python, args.data):
        if not os.path.exists(path):
            raise UserError(f"{path} does not exist")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        raise UserError(f"--seeds={args.seeds!r}: use comma-separated integers such as 1,2") from None
    os.makedirs(args.out, exist_ok=True)
    data = reference_data(args)
    runs = {"reference": {}, "naraim": {}}
    for seed in seeds:
        runs["reference"][seed] = reference_run(args, data, seed)
        runs["naraim"][seed] = naraim_run(args, data, seed)
    commits = {
        "reference": runs["reference"][seeds[0]]["commit"],
        "naraim": _git("rev-parse", "HEAD") + (" (modified)" if _git("status", "--porcelain") else ""),
    }
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["python", "scripts/compare_reference_training.py", *sys.argv[1:]]),
        "commits": commits,
        "settings": {k: v for k, v in vars(args).items() if k not in ("reference_repo", "reference_python")},
        "runs": runs,
        "agreement": {k: agreement(runs, k) for k in ("train_loss", "val_loss")},
    }
    with open(os.path.join(args.out, "compare.json"), "w") as f:
        json.dump(result, f, indent=1)
    title = (
        f"NARAIM reference {commits['reference'][:7]} vs naraim {commits['naraim'][:7]}: Mi4/14, "
        f"batch {args.batch_size}"
    )
    plot(runs, os.path.join(args.out, "compare.png"), title)
    for row in result["agreement"]["val_loss"]:
        print(
            f"step {row['step']}: validation reference {row['reference_mean']:.4f} (spread "
            f"{row['reference_spread']:.4f}), naraim {row['naraim_mean']:.4f} (spread "
            f"{row['naraim_spread']:.4f}), gap {row['gap']:+.4f}"
        )
    print(f"wrote {args.out}/compare.json and compare.png")


if __name__ == "__main__":
    run_main(main)
